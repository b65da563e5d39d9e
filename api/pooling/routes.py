"""``POST /pooling`` (vLLM's, ``task: "token_embed"``) and ``POST /embed_all`` (TEI's): one vector per token of each
text, from a multi-vector (ColBERT-style) model, through the same queue, workers and micro-batcher as embeddings.

Synchronous routes (``api.sync_route``). The worker renders the per-text items (``worker.multivector_pipeline``),
so the API only frames them: vLLM's ``{"id", "object": "list", "created", "model", "data", "usage"}`` around its
``data`` items, TEI's bare ``[[[float]]]`` as it came.
"""

from __future__ import annotations

import functools
import time

import orjson

from api.dispatch import JobBuilder
from api.fast_route import json_post
from api.pooling.schemas import EmbedAllRequest, PoolingRequest, PoolingResponse
from api.sync_route import SyncRoute
from api.tokenize.schemas import sole_model
from shared.errors import ErrorKind, ServiceError
from shared.protocol import TaskReply, TokenEmbedTask
from shared.settings import Settings


def _task(request: PoolingRequest, request_id: str, settings: Settings) -> JobBuilder:
    return functools.partial(
        TokenEmbedTask,
        request_id=request_id,
        model=request.model,
        inputs=request.texts,
        truncate=settings.truncate_inputs if request.truncate is None else request.truncate,
        prompt_name=request.prompt_name,
        input_type=request.mode,
        encoding_format=request.encoding_format,
        layout="pooling",
    )


def _render(request: PoolingRequest, reply: TaskReply, request_id: str) -> bytes:
    usage = {"prompt_tokens": reply.prompt_tokens, "total_tokens": reply.prompt_tokens, "completion_tokens": 0}
    return b'{"id":%b,"object":"list","created":%d,"model":%b,"data":%b,"usage":%b}' % (
        orjson.dumps(f"pool-{request_id}"),
        int(time.time()),
        orjson.dumps(request.model),
        reply.data,
        orjson.dumps(usage),
    )


def _tei_model(request: EmbedAllRequest, settings: Settings) -> str:
    """The model it names, else the deployment's only one, as TEI serves one. Naming none where there is no sole
    model is a 404 (no default model here), not a 400: the schema lets ``model`` out, as TEI's does."""
    model = request.model or sole_model(settings)
    if model is None:
        raise ServiceError(
            ErrorKind.MODEL_NOT_FOUND,
            "no model was named, and this deployment serves more than one: name one in model",
            "model",
        )
    return model


def _tei_task(request: EmbedAllRequest, request_id: str, settings: Settings) -> JobBuilder:
    return functools.partial(
        TokenEmbedTask,
        request_id=request_id,
        model=_tei_model(request, settings),
        inputs=request.texts,
        truncate=settings.truncate_inputs if request.truncate is None else request.truncate,
        prompt_name=request.prompt_name,
        input_type=request.input_type,
        encoding_format="float",
        layout="tei",
    )


def _tei_render(request: EmbedAllRequest, reply: TaskReply, request_id: str) -> bytes:
    return reply.data


POOLING = SyncRoute("/pooling", "pooling", request=PoolingRequest, response=PoolingResponse, task=_task, render=_render)
EMBED_ALL = SyncRoute(
    "/embed_all",
    "embed_all_tei",
    request=EmbedAllRequest,
    response=list[list[list[float]]],
    task=_tei_task,
    render=_tei_render,
    model=_tei_model,
)

ROUTES = [json_post(POOLING), json_post(EMBED_ALL)]
