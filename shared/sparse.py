"""Sparse vectors (a sparse model's rows: per input, its nonzero values and their indices in the vocabulary) as they
are answered and as they are stored.

- **Answered**, each input's nonzero values by ascending index, as TEI lists them: TEI's ``/embed_sparse`` shape,
  ``[[{"index", "value"}, ...], ...]`` (``tei_sparse_body``), and ``/v1/embeddings``' extension, one
  ``{"object": "sparse_embedding", "index", "indices", "values"}`` item per input (``sparse_items``): the
  ``indices`` / ``values`` pair is what Qdrant's ``SparseVector`` and Milvus' sparse vectors take as they are, and
  Elasticsearch's ``sparse_vector`` takes ``{token: weight}`` built from the same pairs.
- **Stored** (a job's chunk, ``encode_sparse``): only what the rows hold, a marker, each row's count (int32), every
  index (int32) and every value (float32): 4 + 8 x nonzeros bytes a row, against 4 x 30,522 for a dense row of a
  BERT vocabulary. The marker's first four bytes are a float32 NaN, which no stored dense chunk starts with, so a
  chunk's bytes say which they are (``is_sparse``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

#: a row: its nonzero entries' indices (int32, ascending) and values (float32)
SparseRow = tuple[np.ndarray, np.ndarray]

#: the first bytes of a stored sparse chunk: a float32 NaN (no dense chunk starts with one), then a version
MARKER = b"SP\xa5\x7fv1\x00\x00"


def sparse_rows(vectors: np.ndarray) -> list[SparseRow]:
    """Each row of dense ``vectors`` as (indices, values) of its nonzero entries, indices ascending."""
    rows = []
    for row in vectors:
        (indices,) = np.nonzero(row)
        rows.append((indices.astype(np.int32), row[indices].astype(np.float32, copy=False)))
    return rows


def tei_sparse_body(rows: list[SparseRow]) -> bytes:
    """TEI's ``/embed_sparse`` answer: per input, its nonzero values as ``{"index", "value"}``, by index."""
    return b"[" + b",".join(_tei_row(indices, values) for indices, values in rows) + b"]"


def _tei_row(indices: np.ndarray, values: np.ndarray) -> bytes:
    if not len(indices):
        return b"[]"
    # float32 values written as float32 (the shortest text that reads back as the same float32), as orjson does
    texts = orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(b",")
    items = (b'{"index":%d,"value":%b}' % (index, text) for index, text in zip(indices.tolist(), texts, strict=True))
    return b"[" + b",".join(items) + b"]"


def sparse_items(rows: list[SparseRow], first_index: int = 0) -> list[dict[str, Any]]:
    """``/v1/embeddings``' ``data`` items for a sparse model; serialize with OPT_SERIALIZE_NUMPY."""
    return [
        {"object": "sparse_embedding", "index": first_index + i, "indices": indices, "values": values}
        for i, (indices, values) in enumerate(rows)
    ]


def sparse_data_array(rows: list[SparseRow]) -> bytes:
    """The whole ``data`` array of ``/v1/embeddings`` for a sparse model, as JSON."""
    return orjson.dumps(sparse_items(rows), option=orjson.OPT_SERIALIZE_NUMPY)


def encode_sparse(rows: list[SparseRow]) -> bytes:
    """Rows as a chunk stores them (module docstring)."""
    counts = np.array([len(indices) for indices, _ in rows], dtype="<i4")
    indices = np.concatenate([indices for indices, _ in rows]).astype("<i4") if rows else np.empty(0, "<i4")
    values = np.concatenate([values for _, values in rows]).astype("<f4") if rows else np.empty(0, "<f4")
    return MARKER + counts.tobytes() + indices.tobytes() + values.tobytes()


def is_sparse(stored: bytes) -> bool:
    return stored[: len(MARKER)] == MARKER


def decode_sparse(stored: bytes, rows: int) -> list[SparseRow]:
    """The ``rows`` rows ``encode_sparse`` stored."""
    offset = len(MARKER)
    counts = np.frombuffer(stored, dtype="<i4", count=rows, offset=offset)
    total = int(counts.sum())
    offset += 4 * rows
    indices = np.frombuffer(stored, dtype="<i4", count=total, offset=offset)
    values = np.frombuffer(stored, dtype="<f4", count=total, offset=offset + 4 * total)
    ends = np.cumsum(counts)
    starts = ends - counts
    return [(indices[start:end], values[start:end]) for start, end in zip(starts.tolist(), ends.tolist(), strict=True)]
