"""A batch's output and error files, rendered in input order from its stored chunks as they are read.

One JSON line per request, in OpenAI's format: ``{"id", "custom_id", "response": {"status_code", "request_id",
"body"}, "error"}``. A request that succeeded goes to the output file with the body ``POST /v1/embeddings`` would
have answered (the same bytes: rendered by the same code, in its own ``encoding_format``); one that failed goes to
the error file with the error the route would have answered; one that never ran (the batch was cancelled or
expired first) goes to the error file with ``error`` set and no response, as OpenAI writes those.

A few chunks are read per round trip and rendered in a thread, so neither the file nor the event loop is held.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import numpy as np
import orjson

from api.batches.plan import ManifestEntry
from api.batches.store import BatchRecord, BatchStore
from api.errors import ERROR_TABLE, error_body
from api.ids import BATCH_ID_PREFIX, OUTPUT
from shared.chunks import ChunkStore, PartResult, decode_vectors
from shared.errors import ResultsLost
from shared.openai_json import data_array, data_array_bytes, embeddings_body

#: chunks read per round trip: rendered (vectors read), and measured (only their manifest and outcomes)
_CHUNKS_PER_READ = 4
_CHUNKS_PER_SIZE = 64

_NEVER_RAN = {
    "cancelled": ("batch_cancelled", "This request was not executed because the batch was cancelled."),
    "expired": ("batch_expired", "This request could not be executed before the completion window expired."),
}
_LOST = ("batch_request_lost", "This request's result was lost; submit it again.")


async def lost_requests(store: BatchStore, chunks: ChunkStore, record: BatchRecord) -> list[tuple[int, int]]:
    """For a completed batch, the requests (first and last index) of every chunk whose results are gone from
    Redis; checked before a file is streamed, so a hole is a 410, not a short file."""
    if record.status() != "completed" or not record.chunks:
        return []
    missing = await chunks.missing_parts(record.batch_id, list(range(record.chunks)))
    lost = []
    for chunk in missing:
        entry = (await store.manifest(record.batch_id, chunk, 1))[0]
        lost.append((entry.first, entry.first + len(entry.custom_ids) - 1))
    return lost


async def render(store: BatchStore, chunks: ChunkStore, record: BatchRecord, which: str) -> AsyncIterator[bytes]:
    """The file's lines; ResultsLost where a completed batch's chunk turns out to be gone."""
    status = record.status()
    for first in range(0, record.chunks, _CHUNKS_PER_READ):
        entries = await store.manifest(record.batch_id, first, _CHUNKS_PER_READ)
        read = list(range(first, first + len(entries)))
        vectors: list[bytes | None] = [None] * len(read)
        if which == OUTPUT:
            vectors = await chunks.vectors(record.batch_id, read)
        parts = await chunks.parts(record.batch_id, read)
        text = await asyncio.to_thread(_render_chunks, record, status, which, entries, vectors, parts)
        if text:
            yield text


async def file_size(store: BatchStore, chunks: ChunkStore, record: BatchRecord, which: str) -> int | None:
    """The file's length in bytes, from its manifest, its requests' outcomes and the length of its stored vectors,
    which are not read; None where a completed batch's results are gone (its content answers 410)."""
    status = record.status()
    size = 0
    for first in range(0, record.chunks, _CHUNKS_PER_SIZE):
        entries = await store.manifest(record.batch_id, first, _CHUNKS_PER_SIZE)
        read = list(range(first, first + len(entries)))
        parts = await chunks.parts(record.batch_id, read)
        stored_bytes = await chunks.vector_bytes(record.batch_id, read) if which == OUTPUT else [0] * len(read)
        for chunk, entry, results, vector_bytes in zip(read, entries, parts, stored_bytes, strict=True):
            try:
                size += _chunk_size(record, status, which, entry, results, vector_bytes)
            except _Unmeasured:  # packed bits, or stored by a worker that did not measure its vectors
                [vectors] = await chunks.vectors(record.batch_id, [chunk])
                size += len(_render_chunks(record, status, which, [entry], [vectors], [results]))
            except ResultsLost:
                return None
    return size


class _Unmeasured(Exception):
    pass


def _requests_of(
    record: BatchRecord, status: str, which: str, entry: ManifestEntry, results: list[PartResult] | None, stored: bool
) -> Iterator[tuple[int, str, PartResult | None, int]]:
    """The chunk's requests that go to file ``which``: index, custom id, outcome, and for a success the offset of
    its first row among the chunk's vectors (``stored``: whether they are there; the errors file needs none)."""
    vectors_lost = which == OUTPUT and not stored and results is not None and _succeeded_inputs(entry, results)
    if status == "completed" and (results is None or vectors_lost):
        raise ResultsLost(f"requests {entry.first}.. of {record.batch_id}")
    offset = 0
    for j, custom_id in enumerate(entry.custom_ids):
        result = None if results is None else results[j]
        if result is not None and result.error is None:
            if which == OUTPUT:
                yield entry.first + j, custom_id, result, offset
            offset += entry.counts[j]
        elif which != OUTPUT:
            yield entry.first + j, custom_id, result, offset


def _render_chunks(
    record: BatchRecord,
    status: str,
    which: str,
    entries: list[ManifestEntry],
    vectors: list[bytes | None],
    parts: list[list[PartResult] | None],
) -> bytes:
    lines: list[bytes] = []
    for entry, stored, results in zip(entries, vectors, parts, strict=True):
        rows: np.ndarray | None = None
        for index, custom_id, result, offset in _requests_of(record, status, which, entry, results, bool(stored)):
            if which != OUTPUT:
                lines.append(_failure_line(record, status, index, custom_id, result))
                continue
            assert result is not None and results is not None and stored is not None
            if rows is None:
                rows = decode_vectors(stored, _succeeded_inputs(entry, results))
            j = index - entry.first
            body = _success_body(record, rows[offset : offset + entry.counts[j]], entry, j, result)
            lines.append(_line(record, index, custom_id, 200, body))
    return b"".join(lines)


def _chunk_size(
    record: BatchRecord,
    status: str,
    which: str,
    entry: ManifestEntry,
    results: list[PartResult] | None,
    vector_bytes: int,
) -> int:
    size = 0
    for index, custom_id, result, _ in _requests_of(record, status, which, entry, results, vector_bytes > 0):
        if which != OUTPUT:
            size += len(_failure_line(record, status, index, custom_id, result))
            continue
        assert result is not None and results is not None
        j = index - entry.first
        fmt, output_dtype = entry.output_format(j)
        if result.float_text_bytes is None or output_dtype != "float":
            raise _Unmeasured
        count = entry.counts[j]
        dimensions = vector_bytes // 4 // _succeeded_inputs(entry, results)
        data = data_array_bytes(count, dimensions, fmt, result.float_text_bytes)
        body = len(embeddings_body(b"", record.model or "", result.prompt_tokens)) + data
        size += len(_line(record, index, custom_id, 200, b"")) + body
    return size


def _succeeded_inputs(entry: ManifestEntry, results: list[PartResult]) -> int:
    return sum(count for count, result in zip(entry.counts, results, strict=True) if not result.error)


def _success_body(record: BatchRecord, rows: np.ndarray, entry: ManifestEntry, j: int, result: PartResult) -> bytes:
    data = data_array(rows, *entry.output_format(j))
    return embeddings_body(data, record.model or "", result.prompt_tokens)


def _failure_line(record: BatchRecord, status: str, index: int, custom_id: str, result: PartResult | None) -> bytes:
    if result is not None and result.error is not None:
        error = result.error
        body = orjson.dumps(error_body(error.kind, error.message, error.param))
        return _line(record, index, custom_id, ERROR_TABLE[error.kind][0], body)
    code, message = _NEVER_RAN.get(status, _LOST)
    line = {
        "id": _line_id(record, index),
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }
    return orjson.dumps(line) + b"\n"


def _line(record: BatchRecord, index: int, custom_id: str, status_code: int, body: bytes) -> bytes:
    head = orjson.dumps(
        {
            "id": _line_id(record, index),
            "custom_id": custom_id,
            "response": {"status_code": status_code, "request_id": f"{record.batch_id}-{index}"},
        }
    )
    # the body goes into the response object as rendered, not parsed and dumped again
    return head[:-2] + b',"body":' + body + b'},"error":null}\n'


def _line_id(record: BatchRecord, index: int) -> str:
    return f"batch_req_{record.batch_id.removeprefix(BATCH_ID_PREFIX)}_{index}"
