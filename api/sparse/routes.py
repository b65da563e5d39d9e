"""TEI's ``POST /embed_sparse``: a sparse model's vectors (SPLADE, inference-free SPLADE), answered as TEI answers
them, ``[[{"index", "value"}, ...], ...]``: per input its nonzero values by ascending index, so TEI's clients work
unchanged. A synchronous route (``api.sync_route``): its task is a ``SparseEmbedTask``, which only a sparse model
serves (another kind is a 400 naming its kind and its route); the worker renders the answer.

The same vectors come from ``/v1/embeddings`` with a sparse model, as ``sparse_embedding`` items
(``api.embeddings.schemas``).
"""

from __future__ import annotations

import functools

from api.dispatch import JobBuilder
from api.fast_route import json_post
from api.sparse.schemas import EmbedSparseRequest, SparseValue, sparse_model
from api.sync_route import SyncRoute
from shared.protocol import SparseEmbedTask, TaskReply
from shared.settings import Settings


def _task(request: EmbedSparseRequest, request_id: str, settings: Settings) -> JobBuilder:
    return functools.partial(
        SparseEmbedTask,
        request_id=request_id,
        model=sparse_model(request, settings),
        input_kind="text",
        inputs=request.inputs,
        dimensions=None,
        truncate=settings.truncate_inputs if request.truncate is None else request.truncate,
        prompt_name=request.prompt_name,
        input_type=request.input_type,
        normalize=None,
        encoding_format="float",
    )


def _as_rendered(request: EmbedSparseRequest, reply: TaskReply, request_id: str) -> bytes:
    """The worker renders TEI's answer; it is sent as it comes."""
    return reply.data


EMBED_SPARSE = SyncRoute(
    "/embed_sparse",
    "embed_sparse_tei",
    request=EmbedSparseRequest,
    response=list[list[SparseValue]],
    task=_task,
    render=_as_rendered,
    model=sparse_model,
)

ROUTE = json_post(EMBED_SPARSE)
