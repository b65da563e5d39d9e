"""``POST /v1/embeddings``: the OpenAI embeddings contract, answered through the queue.

The service's hottest path, so its requests skip FastAPI's request handling: ``create_embeddings`` is plain
ASGI, and ``EmbeddingsShortcut`` (the innermost middleware, after metrics, keys and body limit) hands requests to
it ahead of FastAPI's routing, exception middleware and per-request exit stacks, which together cost about as
much CPU as the whole trip through the queue (bench/run.py, pipeline section). ``ROUTE`` declares it to FastAPI
all the same: the OpenAPI document, 405 for other methods. Errors are only raised, and rendered by ``api.errors``.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable
from typing import Any

import orjson
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from api.dispatch import Dispatcher
from api.errors import service_error_response
from api.schemas import EmbeddingRequest, EmbeddingResponse, error_responses, parse_embedding_request
from shared.errors import ErrorKind, ServiceError
from shared.openai_json import embeddings_body
from shared.protocol import EmbedJob, EmbedResult
from shared.settings import Settings
from shared.workers import now_ms

PATH = "/v1/embeddings"
#: seconds into a request before a client's leaving is watched for
WATCH_AFTER_S = 0.05


class ClientGone(Exception):
    """The client closed the connection before the request was answered: there is no one to answer."""


async def create_embeddings(scope: Scope, receive: Receive, send: Send) -> None:
    state = scope["app"].state
    settings: Settings = state.settings
    dispatcher: Dispatcher = state.dispatcher
    started = time.perf_counter()
    request_id = secrets.token_hex(16)
    scope.setdefault("state", {})["request_id"] = request_id  # the error handlers put it on error responses
    try:
        body = await _read_body(receive)
    except ClientGone:
        return
    try:
        payload = orjson.loads(body)
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
        encoding_format=embedding_request.encoding_format,
    )
    result = await _unless_disconnected(receive, dispatcher.run(job, settings.request_timeout_s))
    if result.error is not None:
        raise ServiceError(result.error.kind, result.error.message, result.error.param)
    headers = [
        (b"content-type", b"application/json"),
        (b"x-request-id", request_id.encode()),
        (b"x-queue-time-ms", b"%.1f" % result.queue_ms),
        (b"x-inference-time-ms", b"%.1f" % result.inference_ms),
        (b"x-total-time-ms", b"%.1f" % ((time.perf_counter() - started) * 1000)),
        (b"x-batch-size", b"%d" % result.batch_size),
        (b"x-batch-requests", b"%d" % result.batch_requests),
    ]
    body = embeddings_body(result.data, embedding_request.model, result.prompt_tokens)
    headers.append((b"content-length", b"%d" % len(body)))
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


async def _unless_disconnected(receive: Receive, work: Awaitable[EmbedResult]) -> EmbedResult:
    """``work``'s result; if the client goes away first, ``work`` is cancelled (withdrawing its queued job).

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
            raise ServiceError(ErrorKind.INVALID_REQUEST, "the client closed the connection") from None
        raise
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _declared_only() -> None:
    raise AssertionError("ROUTE sends requests to create_embeddings")


class _AsgiApiRoute(APIRoute):
    """An APIRoute, documented from its declaration, whose requests go straight to a plain ASGI function."""

    def __init__(self, path: str, app: ASGIApp, **kwargs: Any) -> None:
        super().__init__(path, _declared_only, **kwargs)
        self.app = app


ROUTE = _AsgiApiRoute(
    PATH,
    create_embeddings,
    methods=["POST"],
    name="create_embeddings",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": EmbeddingRequest.model_json_schema()}},
        }
    },
    response_class=Response,
    responses={200: {"model": EmbeddingResponse}, **error_responses(400, 401, 404, 413, 429, 500, 503, 504)},
)


class EmbeddingsShortcut:
    """ASGI middleware, the innermost: hands ``POST /v1/embeddings`` to ``create_embeddings`` ahead of FastAPI's
    routing, exception handling and exit stacks, and answers its errors with the app's error renderer."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or _route_path(scope) != PATH:
            await self._app(scope, receive, send)
            return
        scope["route"] = ROUTE
        try:
            await create_embeddings(scope, receive, send)
        except ServiceError as exc:
            response = service_error_response(exc, scope.get("state", {}).get("request_id"))
            await response(scope, receive, send)


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    return path[len(root_path) :] if root_path and path.startswith(root_path) else path
