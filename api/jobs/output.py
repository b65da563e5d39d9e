"""What a job shows: its object (``JobObject``: status, progress, errors) and its result, the OpenAI embeddings
response rendered in input order from its stored chunks as it is streamed."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, cast

import orjson

from api.errors import results_lost
from api.jobs.store import JobRecord, JobStore
from shared.chunks import decode_vectors
from shared.errors import ErrorKind, ResultsLost, ServiceError
from shared.openai_json import embedding_items, usage
from shared.protocol import EncodingFormat, OutputDtype
from shared.sparse import decode_sparse, is_sparse, sparse_items

log = logging.getLogger(__name__)

#: chunks fetched from Redis per round trip while streaming a result
_CHUNKS_PER_FETCH = 4

LOST_MESSAGE = "these results were lost from the job store (evicted or deleted); submit these inputs again"


def job_object(record: JobRecord, now: float | None = None) -> dict[str, Any]:
    """The job as the API shows it (``JobObject``)."""
    status = record.status(now)
    failures = {**record.chunk_errors, **dict.fromkeys(record.lost_chunks, LOST_MESSAGE)}
    errors = [
        {"offset": offset, "count": count, "message": message}
        for chunk, message in sorted(failures.items())
        for offset, count in [record.chunk_span(chunk)]
    ]
    error: dict[str, str] | None = None
    if record.lost_chunks:
        error = {"code": ErrorKind.JOB_LOST.value, "message": lost(record).message}
    elif status == "failed" and errors:
        error = {"code": "job_failed", "message": str(errors[0]["message"])}
    return {
        "id": record.job_id,
        "object": "embedding.job",
        "status": status,
        "model": record.model,
        "created_at": record.created_at,
        "completed_at": record.completed_at,
        "expires_at": record.expires_at,
        "request_counts": {"total": record.total, "completed": record.completed, "failed": record.failed},
        "usage": usage(record.prompt_tokens),
        "error": error,
        "errors": errors,
        "metadata": record.metadata,
    }


def lost(record: JobRecord) -> ServiceError:
    """410 ``job_lost``, naming the inputs whose stored results are gone."""
    spans = [(offset, offset + count - 1) for offset, count in map(record.chunk_span, record.lost_chunks)]
    return results_lost("inputs", spans)


async def result_body(store: JobStore, record: JobRecord, start: int, end: int) -> AsyncIterator[bytes]:
    """The embeddings response for inputs ``start`` to ``end`` (exclusive), a few chunks per round trip; inputs
    that failed are left out."""
    encoding = cast(EncodingFormat, record.encoding_format)
    output_dtype = cast(OutputDtype, record.output_dtype)
    yield b'{"object":"list","data":['
    first = True
    chunks = record.chunks_between(start, end)
    for group_start in range(0, len(chunks), _CHUNKS_PER_FETCH):
        group = list(chunks[group_start : group_start + _CHUNKS_PER_FETCH])
        for chunk, stored in zip(group, await store.chunks.vectors(record.job_id, group), strict=True):
            if stored is None:
                if chunk in record.chunk_errors:
                    continue  # a failed chunk: its inputs are listed in the job's errors
                log.error("job %s: chunk %d vanished from Redis while its result was read", record.job_id, chunk)
                raise ResultsLost(f"chunk {chunk} of {record.job_id}")
            chunk_start, count = record.chunk_span(chunk)
            first_index, span = max(start, chunk_start), slice(max(0, start - chunk_start), max(0, end - chunk_start))
            if is_sparse(stored):  # a sparse model's rows: sparse_embedding items, whatever the format asked
                sparse = decode_sparse(stored, count)[span]
                items = sparse_items(sparse, first_index) if sparse else None
            else:
                rows = decode_vectors(stored, count)[span]
                items = embedding_items(rows, encoding, first_index, output_dtype) if len(rows) else None
            if items is not None:
                body = orjson.dumps(items, option=orjson.OPT_SERIALIZE_NUMPY)
                yield body[1:-1] if first else b"," + body[1:-1]
                first = False
    tail = {"model": record.model, "usage": usage(record.prompt_tokens)}
    yield b"]," + orjson.dumps(tail)[1:]
