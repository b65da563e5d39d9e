"""``POST /v1/embeddings``: the OpenAI embeddings contract, answered through the queue."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.dispatch import Dispatcher
from api.responses import embeddings_body
from api.schemas import EmbeddingRequest, EmbeddingResponse, error_responses, parse_embedding_request
from shared.errors import ErrorKind, ServiceError
from shared.protocol import EmbedJob, EmbedResult
from shared.settings import Settings
from shared.workers import now_ms

router = APIRouter()

_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": EmbeddingRequest.model_json_schema()}},
    }
}


@router.post(
    "/v1/embeddings",
    openapi_extra=_REQUEST_BODY,
    response_class=Response,
    responses={200: {"model": EmbeddingResponse}, **error_responses(400, 401, 404, 413, 429, 500, 503, 504)},
)
async def create_embeddings(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    dispatcher: Dispatcher = request.app.state.dispatcher
    started = time.perf_counter()
    request_id = request.state.request_id = secrets.token_hex(16)
    try:
        payload = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise ServiceError(ErrorKind.INVALID_REQUEST, "the request body is not valid JSON") from None
    embedding_request = parse_embedding_request(payload, settings)
    input_kind, inputs = embedding_request.input
    enqueued_ms = now_ms()
    job = EmbedJob(
        request_id=request_id,
        model=embedding_request.model,
        input_kind=input_kind,
        inputs=inputs,
        dimensions=embedding_request.dimensions,
        truncate=settings.truncate_inputs if embedding_request.truncate is None else embedding_request.truncate,
        reply_to=dispatcher.reply_key,
        enqueued_ms=enqueued_ms,
        deadline_ms=enqueued_ms + int(settings.request_timeout_s * 1000),
    )
    result = await _unless_disconnected(request, dispatcher.run(job, settings.request_timeout_s))
    if result.error is not None:
        raise ServiceError(result.error.kind, result.error.message, result.error.param)
    body = embeddings_body(result, embedding_request.model, embedding_request.encoding_format)
    headers = {
        "x-request-id": request_id,
        "x-queue-time-ms": f"{result.queue_ms:.1f}",
        "x-inference-time-ms": f"{result.inference_ms:.1f}",
        "x-total-time-ms": f"{(time.perf_counter() - started) * 1000:.1f}",
        "x-batch-size": str(result.batch_size),
        "x-batch-requests": str(result.batch_requests),
    }
    return Response(body, media_type="application/json", headers=headers)


async def _unless_disconnected(request: Request, work: Awaitable[EmbedResult]) -> EmbedResult:
    """``work``'s result; if the client goes away first, ``work`` is cancelled (withdrawing its queued job)."""
    handler = asyncio.current_task()
    assert handler is not None
    watcher = asyncio.ensure_future(_disconnected(request))
    watcher.add_done_callback(lambda done: done.cancelled() or handler.cancel())
    try:
        return await work
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled() and handler.uncancel() == 0:
            raise ServiceError(ErrorKind.INVALID_REQUEST, "the client closed the connection") from None
        raise
    finally:
        watcher.cancel()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
