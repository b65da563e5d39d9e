"""ASGI middleware: refuse request bodies over a size limit with 413, before they are read into memory."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response
from shared.errors import ErrorKind, ServiceError


class BodySizeLimit:
    """``larger``: paths with a limit of their own (file uploads)."""

    def __init__(self, app: ASGIApp, max_bytes: int, larger: dict[str, int] | None = None) -> None:
        self._app = app
        self._max_bytes = max_bytes
        self._larger = larger or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        max_bytes = self._larger.get(scope["path"], self._max_bytes)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            await error_response(ErrorKind.PAYLOAD_TOO_LARGE, _too_large(max_bytes))(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > max_bytes:
                    raise ServiceError(ErrorKind.PAYLOAD_TOO_LARGE, _too_large(max_bytes))
            return event

        await self._app(scope, limited_receive, send)


def _too_large(max_bytes: int) -> str:
    return f"the request body is larger than {max_bytes} bytes"
