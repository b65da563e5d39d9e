"""The OpenAI embeddings JSON, rendered straight from float32 rows with orjson (no Python float per value).

Workers render a synchronous request's ``data`` array (they scale out; the API is the one shared process),
so the API only frames it. The API renders asynchronous jobs' pages from their stored vectors.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import orjson

from shared.protocol import EncodingFormat, OutputDtype
from shared.quantize import quantize


def embedding_items(
    vectors: np.ndarray, encoding_format: EncodingFormat, first_index: int = 0, output_dtype: OutputDtype = "float"
) -> list[dict[str, Any]]:
    """The ``data`` items for the rows of ``vectors`` (float32); serialize with OPT_SERIALIZE_NUMPY. Packed bits
    (``output_dtype``) are JSON integers, or base64 of their bytes."""
    rows = quantize(np.ascontiguousarray(vectors, dtype="<f4"), output_dtype)
    if encoding_format == "base64":
        return [
            {"object": "embedding", "index": first_index + i, "embedding": base64.b64encode(row.tobytes()).decode()}
            for i, row in enumerate(rows)
        ]
    return [{"object": "embedding", "index": first_index + i, "embedding": row} for i, row in enumerate(rows)]


def data_array(vectors: np.ndarray, encoding_format: EncodingFormat, output_dtype: OutputDtype = "float") -> bytes:
    """The whole ``data`` array, as JSON."""
    items = embedding_items(vectors, encoding_format, output_dtype=output_dtype)
    return orjson.dumps(items, option=orjson.OPT_SERIALIZE_NUMPY)


def float_text_bytes(vectors: np.ndarray) -> int:
    """Bytes the rows' values take as JSON floats, each row's brackets and commas included: what ``data_array``
    writes for them in the ``float`` format, bar each item's framing."""
    if not len(vectors):
        return 0
    rows = np.ascontiguousarray(vectors, dtype="<f4")
    # one dump of the matrix: its rows, plus a comma between rows and the outer brackets
    return len(orjson.dumps(rows, option=orjson.OPT_SERIALIZE_NUMPY)) - len(rows) - 1


def data_array_bytes(count: int, dimensions: int, encoding_format: EncodingFormat, float_bytes: int) -> int:
    """``len(data_array(vectors, encoding_format))`` for ``count`` rows of ``dimensions`` values whose
    ``float_text_bytes`` is ``float_bytes``, measured without the rows: the framing is rendered around empty ones."""
    framing = len(data_array(np.zeros((count, 0), dtype="<f4"), encoding_format))
    if encoding_format == "base64":
        return framing + count * 4 * -(-(4 * dimensions) // 3)
    return framing - 2 * count + float_bytes  # an empty row is written "[]"


def usage(prompt_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}


def embeddings_body(data: bytes, model: str, prompt_tokens: int) -> bytes:
    """The response body around a rendered ``data`` array."""
    return b'{"object":"list","data":%b,"model":%b,"usage":%b}' % (
        data,
        orjson.dumps(model),
        orjson.dumps(usage(prompt_tokens)),
    )
