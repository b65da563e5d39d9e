"""The one table from error kinds to HTTP, and the OpenAI-shaped error body.

Routes and helpers only raise ``ServiceError``; the handlers here are the only place a status code is chosen.
Internal exception text never reaches a client.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import iter_route_contexts
from pydantic import BaseModel
from redis.exceptions import OutOfMemoryError, RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, compile_path

from api.http import route_path
from api.metrics import ERRORS
from shared.errors import ErrorKind, ServiceError

log = logging.getLogger(__name__)

#: kind -> (HTTP status, OpenAI error ``type``)
ERROR_TABLE: dict[ErrorKind, tuple[int, str]] = {
    ErrorKind.INVALID_REQUEST: (400, "invalid_request_error"),
    ErrorKind.INPUT_TOO_LONG: (400, "invalid_request_error"),
    ErrorKind.AUTHENTICATION: (401, "authentication_error"),
    ErrorKind.MODEL_NOT_FOUND: (404, "invalid_request_error"),
    ErrorKind.NOT_FOUND: (404, "invalid_request_error"),
    ErrorKind.METHOD_NOT_ALLOWED: (405, "invalid_request_error"),
    ErrorKind.NOT_READY: (409, "invalid_request_error"),
    ErrorKind.EXPIRED: (410, "invalid_request_error"),
    ErrorKind.JOB_LOST: (410, "server_error"),
    ErrorKind.PAYLOAD_TOO_LARGE: (413, "invalid_request_error"),
    ErrorKind.RATE_LIMITED: (429, "rate_limit_error"),
    ErrorKind.KEY_BACKLOG_FULL: (429, "rate_limit_error"),
    ErrorKind.INSUFFICIENT_STORAGE: (507, "server_error"),
    ErrorKind.INTERNAL: (500, "server_error"),
    ErrorKind.MODEL_UNAVAILABLE: (503, "server_error"),
    ErrorKind.SERVICE_UNAVAILABLE: (503, "server_error"),
    ErrorKind.STORE_EVICTS: (503, "server_error"),
    ErrorKind.TIMEOUT: (504, "server_error"),
}

_HTTP_ERROR_KINDS = {404: ErrorKind.NOT_FOUND, 405: ErrorKind.METHOD_NOT_ALLOWED}

#: seconds a client should wait before retrying, for statuses worth retrying
RETRY_AFTER_S: dict[int, int] = {429: 1, 503: 1}


def results_lost(what: str, spans: list[tuple[int, int]]) -> ServiceError:
    """410 ``job_lost`` naming the ``what`` (inputs, requests) whose stored results are gone, by first and last."""
    named = ", ".join(f"{first}-{last}" for first, last in spans)
    return ServiceError(
        ErrorKind.JOB_LOST,
        f"the results of {what} {named} were lost from the job store (evicted or deleted); submit them again",
    )


def error_body(kind: ErrorKind, message: str, param: str | None = None) -> dict[str, dict[str, str | None]]:
    """The OpenAI error body."""
    return {"error": {"message": message, "type": ERROR_TABLE[kind][1], "param": param, "code": kind.value}}


def error_response(kind: ErrorKind, message: str, param: str | None = None) -> Response:
    ERRORS.labels(kind.value).inc()
    status = ERROR_TABLE[kind][0]
    body = error_body(kind, message, param)
    headers = {"retry-after": str(RETRY_AFTER_S[status])} if status in RETRY_AFTER_S else None
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def service_error_response(exc: ServiceError, request_id: str | None) -> Response:
    response = error_response(exc.kind, exc.message, exc.param)
    log.info("request %s answered %d %s", request_id or "-", response.status_code, exc.kind.value)
    return response


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return service_error_response(exc, getattr(request.state, "request_id", None))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    param = ".".join(str(part) for part in first.get("loc", ())[1:]) or None
    return error_response(ErrorKind.INVALID_REQUEST, str(first.get("msg", "invalid request")), param)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors: 404 for an unknown route, 405 for a known route and another method; a 405 says
    which methods the path takes (``Allow``, as RFC 9110 requires), from every route on it."""
    assert isinstance(exc, StarletteHTTPException)
    kind = _HTTP_ERROR_KINDS.get(exc.status_code, ErrorKind.INVALID_REQUEST)
    response = error_response(kind, str(exc.detail))
    if exc.status_code == 405:
        response.headers["allow"] = ", ".join(allowed_methods(request.app.routes, route_path(request.scope)))
    return response


def allowed_methods(routes: list[BaseRoute], path: str) -> list[str]:
    """The methods the routes matching ``path`` answer (those of included routers too), in a stable order."""
    methods: set[str] = set()
    for route in iter_route_contexts(routes):
        if route.methods and route.path and compile_path(route.path)[0].match(path):
            methods |= route.methods
    return sorted(methods)


async def _redis_unreachable(request: Request, exc: Exception) -> Response:
    """Redis down or failing over: a retryable 503 on every route, not a 500 and a dropped connection."""
    request_id = getattr(request.state, "request_id", "-")
    log.warning("request %s on %s %s: Redis failed (%r)", request_id, request.method, request.url.path, exc)
    unreachable = ServiceError(ErrorKind.SERVICE_UNAVAILABLE, "the job store is unreachable; retry shortly")
    return service_error_response(unreachable, request_id)


async def _redis_out_of_memory(request: Request, exc: Exception) -> Response:
    """Redis refused a write for want of memory: the store is full, which waiting a second does not fix."""
    request_id = getattr(request.state, "request_id", "-")
    log.warning("request %s on %s %s: Redis is out of memory", request_id, request.method, request.url.path)
    full = ServiceError(ErrorKind.INSUFFICIENT_STORAGE, "the job store is out of memory; retry later")
    return service_error_response(full, request_id)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    """A bug: 500, and ``Connection: close``. Starlette re-raises the exception once this response is sent and
    uvicorn then closes the connection, so a client that kept it alive would meet a reset on its next request."""
    request_id = getattr(request.state, "request_id", "-")
    log.error("request %s on %s %s failed", request_id, request.method, request.url.path, exc_info=exc)
    response = error_response(ErrorKind.INTERNAL, "the server failed to process this request")
    response.headers["connection"] = "close"
    if request_id != "-":
        response.headers["x-request-id"] = request_id  # outside RequestTracking, which adds it to every other answer
    return response


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(OutOfMemoryError, _redis_out_of_memory)
    app.add_exception_handler(RedisError, _redis_unreachable)
    app.add_exception_handler(ConnectionError, _redis_unreachable)
    app.add_exception_handler(Exception, _unexpected_error)


# What each kind of route can answer, for the OpenAPI document. The middleware adds its own to every route it
# guards (``api.openapi``): 401 where a key is needed, 413 where there is a body, 400 where there are parameters.

#: Redis down or failing over, and a bug; every route that reads Redis
READ_ERRORS = (ErrorKind.SERVICE_UNAVAILABLE, ErrorKind.INTERNAL)
#: and, for a route that writes, Redis full or configured to evict keys
WRITE_ERRORS = (*READ_ERRORS, ErrorKind.INSUFFICIENT_STORAGE, ErrorKind.STORE_EVICTS)
#: the readiness probe: Redis unreachable or evicting, or no worker alive
READINESS_ERRORS = (ErrorKind.SERVICE_UNAVAILABLE, ErrorKind.STORE_EVICTS)

#: a synchronous inference route: embeddings and rerank, in every shape
SYNC_ERRORS = (
    *WRITE_ERRORS,
    ErrorKind.INVALID_REQUEST,
    ErrorKind.INPUT_TOO_LONG,
    ErrorKind.MODEL_NOT_FOUND,
    ErrorKind.MODEL_UNAVAILABLE,
    ErrorKind.RATE_LIMITED,
    ErrorKind.TIMEOUT,
)
#: creating a job (an ``Idempotency-Key`` repeated finds the job it made: gone, or lost with Redis)
JOB_CREATION_ERRORS = (
    *WRITE_ERRORS,
    ErrorKind.INVALID_REQUEST,
    ErrorKind.MODEL_NOT_FOUND,
    ErrorKind.RATE_LIMITED,
    ErrorKind.NOT_FOUND,
    ErrorKind.JOB_LOST,
)
#: creating a batch from an uploaded file
BATCH_CREATION_ERRORS = (*WRITE_ERRORS, ErrorKind.INVALID_REQUEST, ErrorKind.NOT_FOUND, ErrorKind.RATE_LIMITED)
#: uploading a file
UPLOAD_ERRORS = (*WRITE_ERRORS, ErrorKind.INVALID_REQUEST)
#: one stored object (job, batch, file): not the caller's or never made (404), lost with Redis (410); reading one
#: may record what it measured, cancelling and deleting write
OBJECT_ERRORS = (*WRITE_ERRORS, ErrorKind.NOT_FOUND, ErrorKind.JOB_LOST)
#: a job's results: as the job, or not completed yet (409), or expired (410)
RESULT_ERRORS = (*OBJECT_ERRORS, ErrorKind.NOT_READY, ErrorKind.EXPIRED)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str


class ErrorBody(BaseModel):
    error: ErrorDetail


def error_responses(*kinds: ErrorKind) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the error kinds a route can answer: one per status, naming its codes."""
    codes: dict[int, list[str]] = {}
    for kind in kinds:
        codes.setdefault(ERROR_TABLE[kind][0], []).append(kind.value)
    return {
        status: {"model": ErrorBody, "description": error_description(names)} for status, names in sorted(codes.items())
    }


def error_description(codes: list[str]) -> str:
    return "OpenAI-shaped error; `code`: " + ", ".join(f"`{code}`" for code in dict.fromkeys(codes))
