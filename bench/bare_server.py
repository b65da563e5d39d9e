"""The fastest endpoints that return what ``/v1/embeddings`` returns: raw body parsed with orjson, a constant
384-float response built with orjson, no queue, no model. The ceiling for the pipeline's own cost.

- ``app``: a FastAPI route (FastAPI's OpenTelemetry instrumentation off, as in the API by default);
- ``asgi_app``: plain ASGI, no framework at all: what the HTTP server alone costs (the API's own fast routes are
  plain ASGI too, ``api.fast_route``).

    .venv/bin/python -m uvicorn bench.bare_server:app --host 127.0.0.1 --port 8100
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

app = FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False})
_VECTOR = np.full(384, 1 / np.sqrt(384), dtype=np.float32)


def _body(payload: dict[str, Any]) -> bytes:
    texts = payload["input"] if isinstance(payload["input"], list) else [payload["input"]]
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": _VECTOR} for i in range(len(texts))],
        "model": payload["model"],
        "usage": {"prompt_tokens": 0, "total_tokens": 0},
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


@app.post("/v1/embeddings")
async def embeddings(request: Request) -> Response:
    return Response(_body(orjson.loads(await request.body())), media_type="application/json")


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``POST /v1/embeddings`` (any path) as plain ASGI."""
    if scope["type"] != "http":
        return
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = _body(orjson.loads(b"".join(chunks)))
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
