"""The seed's design, as a baseline: one FastAPI process that encodes each request as it arrives (no queue, no
batching across requests), written the stronger way: an ``async def`` endpoint encoding in the event loop (a ``def``
endpoint runs every request's encode at once in the thread pool and serves 2-4x less on a small CPU). It runs the
model on the same runtime as the project's workers (``BACKEND``, default auto), so the comparison is of designs.

    .venv/bin/python -m uvicorn bench.naive_server:app --host 127.0.0.1 --port 8101
"""

from __future__ import annotations

import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel

from shared.settings import Settings
from worker.models.source import BUNDLED_MINILM, load_encoder

app = FastAPI()
encoder = load_encoder(BUNDLED_MINILM, Settings())


class EmbeddingRequest(BaseModel):
    input: str | list[str]
    model: str


@app.post("/v1/embeddings")
async def embeddings(request: EmbeddingRequest) -> dict[str, object]:
    texts = [request.input] if isinstance(request.input, str) else request.input
    vectors = encoder.encode_texts(texts)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)],
        "model": request.model,
        "usage": {"prompt_tokens": 0, "total_tokens": 0},
    }
