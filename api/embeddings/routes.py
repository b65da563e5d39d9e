"""``POST /v1/embeddings``: the OpenAI embeddings contract, answered through the queue.

Plain ASGI (``api.fast_route`` says why and how it is still a documented FastAPI route). Errors are only raised,
as ``ServiceError`` (rendered by ``api.errors``) or ``ClientGone`` (counted by ``api.metrics``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

from fastapi.responses import Response
from starlette.types import Receive, Scope, Send

from api.dispatch import Dispatcher
from api.embeddings.options import EmbedOptions
from api.embeddings.schemas import EmbeddingRequest, EmbeddingResponse, parse_embedding_request
from api.errors import error_responses
from api.fast_route import FastRoute
from api.http import parse_json
from shared.errors import ClientGone, ServiceError
from shared.openai_json import embeddings_body
from shared.protocol import SyncReply
from shared.settings import Settings

#: seconds into a request before a client's leaving is watched for
WATCH_AFTER_S = 0.05


async def create_embeddings(scope: Scope, receive: Receive, send: Send) -> None:
    state = scope["app"].state
    settings: Settings = state.settings
    dispatcher: Dispatcher = state.dispatcher
    started = time.perf_counter()
    request_id = scope["state"]["request_id"]
    embedding_request = parse_embedding_request(parse_json(await _read_body(receive)), settings)
    options = EmbedOptions.of(embedding_request, settings)
    inputs = embedding_request.input[1]
    work = dispatcher.run(request_id, options, inputs, embedding_request.encoding_format)
    reply = await _unless_disconnected(receive, work)
    if reply.error is not None:
        raise ServiceError(reply.error.kind, reply.error.message, reply.error.param)
    body = embeddings_body(reply.data, embedding_request.model, reply.prompt_tokens)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"x-queue-time-ms", b"%.1f" % reply.queue_ms),
        (b"x-inference-time-ms", b"%.1f" % reply.inference_ms),
        (b"x-total-time-ms", b"%.1f" % ((time.perf_counter() - started) * 1000)),
        (b"x-batch-size", b"%d" % reply.batch_size),
        (b"x-batch-requests", b"%d" % reply.batch_requests),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _unless_disconnected(receive: Receive, work: Awaitable[SyncReply]) -> SyncReply:
    """``work``'s result; if the client goes away first, ``work`` is cancelled (withdrawing its queued job) and
    ClientGone raised.

    The watch starts ``WATCH_AFTER_S`` in: most requests are answered sooner, and a watcher task costs more,
    on every request, than catching an early leaver at once would save (its job is usually running by then).
    """
    loop = asyncio.get_running_loop()
    handler = asyncio.current_task()
    assert handler is not None
    watcher: asyncio.Task[None] | None = None

    def watch() -> None:
        nonlocal watcher
        watcher = loop.create_task(_disconnected(receive))
        watcher.add_done_callback(lambda done: done.cancelled() or handler.cancel())

    timer = loop.call_later(WATCH_AFTER_S, watch)
    try:
        return await work
    except asyncio.CancelledError:
        if watcher is not None and watcher.done() and not watcher.cancelled() and handler.uncancel() == 0:
            raise ClientGone from None
        raise
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


ROUTE = FastRoute(
    "/v1/embeddings",
    create_embeddings,
    method="POST",
    name="create_embeddings",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": EmbeddingRequest.model_json_schema()}},
        }
    },
    response_class=Response,
    responses={200: {"model": EmbeddingResponse}, **error_responses(400, 401, 404, 405, 413, 429, 500, 503, 504)},
)
