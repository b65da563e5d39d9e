"""OpenAI embeddings response bodies, built straight from the worker's float32 bytes with orjson."""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np
import orjson

from shared.protocol import EmbedResult


def embeddings_body(result: EmbedResult, model: str, encoding_format: Literal["float", "base64"]) -> bytes:
    data: list[dict[str, Any]]
    if encoding_format == "base64":
        row_bytes = result.dim * 4
        raw = result.vectors
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(raw[i * row_bytes : (i + 1) * row_bytes]).decode(),
            }
            for i in range(result.count)
        ]
    else:
        vectors = np.frombuffer(result.vectors, dtype="<f4").reshape(result.count, result.dim)
        data = [{"object": "embedding", "index": i, "embedding": vectors[i]} for i in range(result.count)]
    body = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
