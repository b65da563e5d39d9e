"""``shared.kinds``: one table of kinds, their routes and the refusal a model on the wrong route gets."""

from shared.kinds import KINDS, MODEL_KINDS, wrong_kind_message


def test_every_kind_has_routes_and_a_way_to_use_it():
    assert set(KINDS) == set(MODEL_KINDS) == {"embedding", "sparse", "multivector", "reranker"}
    for kind in KINDS.values():
        assert kind.routes and kind.use and kind.is_a


def test_the_refusal_names_the_kind_and_the_route():
    assert wrong_kind_message("m", "sparse", ("embedding",)) == (
        "model 'm' is a sparse model, not an embedding model; use it with /embed_sparse or /v1/embeddings"
    )
    assert wrong_kind_message("r", "reranker", ("embedding", "sparse")) == (
        "model 'r' is a reranker, not an embedding model or a sparse model; use it with /v1/rerank"
    )
