"""The kinds of model served, what a client is told each is, and the routes that serve it: the one table the worker
refuses a model on the wrong route from (``worker.task_pipeline.model_of_kind``) and ``GET /v1/models`` shows
(``api.model_cards``)."""

from __future__ import annotations

from typing import Literal, NamedTuple

#: every kind a client may meet
ModelKind = Literal["embedding", "sparse", "multivector", "reranker"]
MODEL_KINDS: tuple[ModelKind, ...] = ("embedding", "sparse", "multivector", "reranker")


class Kind(NamedTuple):
    #: what the model is, in an error message ("model 'x' is a sparse model, ...")
    is_a: str
    #: the routes that take a model of this kind, the main one first
    routes: tuple[str, ...]
    #: where an error sends a client who used it on another route
    use: str


KINDS: dict[ModelKind, Kind] = {
    "embedding": Kind(
        "an embedding model",
        ("/v1/embeddings", "/v2/embed", "/v1/embeddings/jobs", "/v1/batches"),
        "/v1/embeddings",
    ),
    "sparse": Kind(
        "a sparse model", ("/embed_sparse", "/v1/embeddings", "/v1/embeddings/jobs"), "/embed_sparse or /v1/embeddings"
    ),
    "multivector": Kind(
        "a multi-vector model",
        ("/pooling", "/embed_all", "/v1/rerank", "/v2/rerank", "/rerank"),
        "/pooling (task token_embed) or /embed_all",
    ),
    "reranker": Kind("a reranker", ("/v1/rerank", "/v2/rerank", "/rerank"), "/v1/rerank"),
}


def wrong_kind_message(model: str, kind: ModelKind, wanted: tuple[ModelKind, ...]) -> str:
    """What a client is told when ``model`` (of ``kind``) is used where only ``wanted`` kinds are served: the
    model's kind and the route to use it on."""
    needs = " or ".join(KINDS[each].is_a for each in wanted)
    return f"model {model!r} is {KINDS[kind].is_a}, not {needs}; use it with {KINDS[kind].use}"
