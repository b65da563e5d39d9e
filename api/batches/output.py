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
from collections.abc import AsyncIterator

import numpy as np
import orjson

from api.batches.store import BATCH_ID_PREFIX, OUTPUT, BatchRecord, BatchStore, ManifestEntry
from api.errors import ERROR_TABLE, error_body
from shared.chunks import JobStore, PartResult
from shared.errors import ResultsLost
from shared.openai_json import data_array, embeddings_body

#: chunks read per round trip
_CHUNKS_PER_READ = 4

_NEVER_RAN = {
    "cancelled": ("batch_cancelled", "This request was not executed because the batch was cancelled."),
    "expired": ("batch_expired", "This request could not be executed before the completion window expired."),
}
_LOST = ("batch_request_lost", "This request's result was lost; submit it again.")


async def lost_requests(store: BatchStore, jobs: JobStore, record: BatchRecord) -> list[tuple[int, int]]:
    """For a completed batch, the requests (first and last index) of every chunk whose results are gone from
    Redis; checked before a file is streamed, so a hole is a 410, not a short file."""
    if record.status() != "completed" or not record.chunks:
        return []
    missing = await jobs.missing_parts(record.batch_id, record.chunks)
    lost = []
    for chunk in missing:
        entry = (await store.manifest(record.batch_id, chunk, 1))[0]
        lost.append((entry.first, entry.first + len(entry.custom_ids) - 1))
    return lost


async def render(store: BatchStore, jobs: JobStore, record: BatchRecord, which: str) -> AsyncIterator[bytes]:
    """The file's lines; ResultsLost where a completed batch's chunk turns out to be gone."""
    status = record.status()
    for first in range(0, record.chunks, _CHUNKS_PER_READ):
        entries = await store.manifest(record.batch_id, first, _CHUNKS_PER_READ)
        chunks = list(range(first, first + len(entries)))
        vectors = await jobs.chunk_vectors(record.batch_id, chunks)
        parts = await jobs.chunk_parts(record.batch_id, chunks)
        text = await asyncio.to_thread(_render_chunks, record, status, which, entries, vectors, parts)
        if text:
            yield text


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
        succeeded = sum(count for count, result in zip(entry.counts, results or [], strict=False) if not result.error)
        if status == "completed" and (results is None or (succeeded and stored is None)):
            raise ResultsLost(f"requests {entry.first}.. of {record.batch_id}")
        rows = np.frombuffer(stored or b"", dtype="<f4").reshape(succeeded, -1) if succeeded else np.empty((0, 0))
        offset = 0
        for j, custom_id in enumerate(entry.custom_ids):
            index = entry.first + j
            result = None if results is None else results[j]
            if result is not None and result.error is None:
                count = entry.counts[j]
                if which == OUTPUT:
                    body = _success_body(record, rows[offset : offset + count], entry.formats[j], result)
                    lines.append(_line(record, index, custom_id, 200, body))
                offset += count
            elif which != OUTPUT:
                lines.append(_failure_line(record, status, index, custom_id, result))
    return b"".join(lines)


def _success_body(record: BatchRecord, rows: np.ndarray, fmt: str, result: PartResult) -> bytes:
    data = data_array(rows, "base64" if fmt == "b" else "float")
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
