"""``POST /v1/embeddings``: the OpenAI embeddings contract, answered through the queue.

A synchronous route (``api.sync_route``): the request is ``EmbeddingRequest``, ``EmbedOptions`` makes its
``EmbedTask``, and the worker's ``data`` array is framed into the OpenAI response as it came. For a sparse model
(SPLADE) the worker answers ``sparse_embedding`` items instead (``shared.sparse``), framed the same way.
"""

from __future__ import annotations

import functools

from api.dispatch import JobBuilder
from api.embeddings.options import EmbedOptions
from api.embeddings.schemas import EmbeddingRequest, EmbeddingResponse
from api.fast_route import json_post
from api.sync_route import SyncRoute
from shared.openai_json import embeddings_body
from shared.protocol import TaskReply
from shared.settings import Settings


def _task(request: EmbeddingRequest, request_id: str, settings: Settings) -> JobBuilder:
    options = EmbedOptions.of(request)
    return functools.partial(
        options.sync_job, request_id, request.input[1], request.encoding_format, request.output_dtype
    )


def _render(request: EmbeddingRequest, reply: TaskReply, request_id: str) -> bytes:
    return embeddings_body(reply.data, request.model, reply.prompt_tokens)


EMBEDDINGS = SyncRoute(
    "/v1/embeddings",
    "create_embeddings",
    request=EmbeddingRequest,
    response=EmbeddingResponse,
    task=_task,
    render=_render,
)

ROUTE = json_post(EMBEDDINGS)
