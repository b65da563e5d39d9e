"""The fastest FastAPI endpoint that returns what ``/v1/embeddings`` returns: raw body parsed with orjson, a
constant 384-float response built with orjson, no queue, no model, FastAPI's OpenTelemetry instrumentation off
(as in the API by default). The ceiling for the pipeline's own cost.

    .venv/bin/python -m uvicorn bench.bare_server:app --host 127.0.0.1 --port 8100
"""

from __future__ import annotations

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

app = FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False})
_VECTOR = np.full(384, 1 / np.sqrt(384), dtype=np.float32)


@app.post("/v1/embeddings")
async def embeddings(request: Request) -> Response:
    payload = orjson.loads(await request.body())
    texts = payload["input"] if isinstance(payload["input"], list) else [payload["input"]]
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": _VECTOR} for i in range(len(texts))],
        "model": payload["model"],
        "usage": {"prompt_tokens": 0, "total_tokens": 0},
    }
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")
