"""OpenAI embeddings response bodies, built straight from the worker's float32 bytes with orjson."""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np
import orjson

from shared.protocol import EmbedResult


def embedding_items(
    vectors: bytes, count: int, dim: int, encoding_format: Literal["float", "base64"], first_index: int = 0
) -> list[dict[str, Any]]:
    """The ``data`` items for ``count`` rows of float32 vectors; serialize with OPT_SERIALIZE_NUMPY."""
    if encoding_format == "base64":
        row_bytes = dim * 4
        return [
            {
                "object": "embedding",
                "index": first_index + i,
                "embedding": base64.b64encode(vectors[i * row_bytes : (i + 1) * row_bytes]).decode(),
            }
            for i in range(count)
        ]
    rows = np.frombuffer(vectors, dtype="<f4").reshape(count, dim)
    return [{"object": "embedding", "index": first_index + i, "embedding": rows[i]} for i in range(count)]


def usage(prompt_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}


def embeddings_body(result: EmbedResult, model: str, encoding_format: Literal["float", "base64"]) -> bytes:
    body = {
        "object": "list",
        "data": embedding_items(result.vectors, result.count, result.dim, encoding_format),
        "model": model,
        "usage": usage(result.prompt_tokens),
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
