"""``POST /v1/embeddings``: the OpenAI embeddings contract, answered through the queue.

The service's hottest path, so it is a plain ASGI endpoint on a Starlette route instead of a FastAPI route:
FastAPI's per-request machinery (request objects, dependency solving, exit stacks, included-router
resolution) costs about as much CPU as the whole trip through the queue (bench/run.py, pipeline section).
Errors are still only raised, and the app's handlers answer them. ``DOCUMENTATION`` describes the route to
the OpenAPI document.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable

import orjson
from fastapi import Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from api.dispatch import Dispatcher
from api.responses import embeddings_body
from api.schemas import EmbeddingRequest, EmbeddingResponse, error_responses, parse_embedding_request
from shared.errors import ErrorKind, ServiceError
from shared.protocol import EmbedJob, EmbedResult
from shared.settings import Settings
from shared.workers import now_ms

PATH = "/v1/embeddings"


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
    body = embeddings_body(result, embedding_request.model, embedding_request.encoding_format)
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
    """``work``'s result; if the client goes away first, ``work`` is cancelled (withdrawing its queued job)."""
    handler = asyncio.current_task()
    assert handler is not None
    watcher = asyncio.ensure_future(_disconnected(receive))
    watcher.add_done_callback(lambda done: done.cancelled() or handler.cancel())
    try:
        return await work
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled() and handler.uncancel() == 0:
            raise ServiceError(ErrorKind.INVALID_REQUEST, "the client closed the connection") from None
        raise
    finally:
        watcher.cancel()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class AsgiRoute(Route):
    """A route straight to an ASGI function, recorded in the scope as FastAPI's routes are (metrics read it)."""

    def __init__(self, path: str, app: ASGIApp, *, methods: list[str]) -> None:
        super().__init__(path, app, methods=methods)
        self.app = app  # Starlette would wrap a plain function as ``f(request) -> response``

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is not Match.NONE:
            child_scope["route"] = self
        return match, child_scope


ROUTE = AsgiRoute(PATH, create_embeddings, methods=["POST"])


async def _documentation_only(request: Request) -> Response:
    raise AssertionError("requests to POST /v1/embeddings are served by ROUTE")


#: what the OpenAPI document says of ``ROUTE``
DOCUMENTATION = APIRoute(
    PATH,
    _documentation_only,
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
