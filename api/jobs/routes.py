"""Asynchronous embedding jobs: submit many texts, poll progress, fetch (streamed, pageable) results, cancel."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from redis.asyncio import Redis

from api.admission import Admission
from api.auth import owner_of
from api.embeddings.options import EmbedOptions
from api.embeddings.schemas import EmbeddingResponse
from api.errors import (
    JOB_CREATION_ERRORS,
    OBJECT_ERRORS,
    RESULT_ERRORS,
    error_responses,
    results_lost,
)
from api.http import json_response, parse_json
from api.ids import JOB_ID_PREFIX, new_id, owned
from api.jobs.schemas import DeletedJob, JobObject, JobRequest, parse_job_request
from api.jobs.store import JobRecord, JobStore
from api.openapi import links
from shared import keys
from shared.chunks import decode_vectors
from shared.clock import now_ms
from shared.errors import ErrorKind, ResultsLost, ServiceError
from shared.job_queue import JobQueue, NewJob
from shared.openai_json import embedding_items, usage
from shared.protocol import EncodingFormat, OutputDtype, encode_job
from shared.settings import Settings
from shared.storage import RECORD_BYTES, input_bytes, results_bytes

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/embeddings/jobs", tags=["jobs"])

#: chunks fetched from Redis per round trip while streaming a result
_CHUNKS_PER_FETCH = 4

_JOB_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": JobRequest.model_json_schema()}}}
}


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
        error = {"code": ErrorKind.JOB_LOST.value, "message": _lost(record).message}
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


LOST_MESSAGE = "these results were lost from the job store (evicted or deleted); submit these inputs again"


def _lost(record: JobRecord) -> ServiceError:
    spans = [(offset, offset + count - 1) for offset, count in map(record.chunk_span, record.lost_chunks)]
    return results_lost("inputs", spans)


async def _job_of(request: Request, job_id: str) -> JobRecord:
    store: JobStore = request.app.state.jobs
    record = await owned(request, await store.get(job_id), JOB_ID_PREFIX, job_id, "job")
    return await store.with_losses(record)


@router.post(
    "",
    status_code=202,
    openapi_extra=_JOB_BODY,
    response_class=Response,
    responses={
        202: {
            "model": JobObject,
            "links": links(
                "job_id",
                GetJob=("GET", "/v1/embeddings/jobs/{job_id}"),
                GetJobResult=("GET", "/v1/embeddings/jobs/{job_id}/result"),
                CancelJob=("POST", "/v1/embeddings/jobs/{job_id}/cancel"),
                DeleteJob=("DELETE", "/v1/embeddings/jobs/{job_id}"),
            ),
        },
        **error_responses(*JOB_CREATION_ERRORS),
    },
)
async def create_job(request: Request) -> Response:
    """Queue a job; answers 202 at once. The same ``Idempotency-Key`` again returns the same job."""
    settings: Settings = request.app.state.settings
    redis: Redis = request.app.state.redis
    job_request = parse_job_request(parse_json(await request.body()), settings)
    owner = owner_of(request.state)
    job_id = new_id(JOB_ID_PREFIX)
    idempotency_key = request.headers.get("idempotency-key")
    if idempotency_key is None:
        return json_response(job_object(await _submit(request, owner, job_id, job_request)), 202)
    if not 0 < len(idempotency_key) <= 256:
        raise ServiceError(ErrorKind.INVALID_REQUEST, "Idempotency-Key must be 1 to 256 characters")
    key = keys.idempotency(owner, idempotency_key)
    if not await redis.set(key, job_id, nx=True, ex=settings.job_result_ttl_s):
        existing = await redis.get(key)
        if existing is not None:
            return json_response(job_object(await _job_of(request, existing.decode())), 202)
    try:
        record = await _submit(request, owner, job_id, job_request)
    except ServiceError:
        await redis.delete(key)  # nothing was created under it
        raise
    return json_response(job_object(record), 202)


async def _submit(request: Request, owner: str, job_id: str, job_request: JobRequest) -> JobRecord:
    settings: Settings = request.app.state.settings
    store: JobStore = request.app.state.jobs
    inputs = job_request.input[1]
    created = int(time.time())
    record = JobRecord(
        job_id=job_id,
        owner=owner,
        model=job_request.model,
        created_at=created,
        expires_at=created + settings.job_result_ttl_s,
        total=len(inputs),
        chunk_size=settings.job_chunk_size,
        encoding_format=job_request.encoding_format,
        output_dtype=job_request.output_dtype,
        dimensions=job_request.dimensions,
        metadata=job_request.metadata or {},
    )
    admission: Admission = request.app.state.admission
    dimensions = await admission.dimensions(record.model, record.dimensions)
    held = results_bytes(record.total, dimensions, record.chunk_count) + input_bytes(inputs) + RECORD_BYTES
    await admission.reserve(job_id, held, record.expires_at)
    try:
        await store.create(record)
        await _enqueue_chunks(request, record, job_request)
    except BaseException:
        await store.delete(job_id)
        await admission.release(job_id)
        raise
    return record


async def _enqueue_chunks(request: Request, record: JobRecord, job_request: JobRequest) -> None:
    settings: Settings = request.app.state.settings
    queue: JobQueue = request.app.state.chunk_queue
    options = EmbedOptions.of(job_request, settings)
    inputs = job_request.input[1]
    enqueued = now_ms()
    expires_ms = (record.expires_at - record.created_at) * 1000
    chunks = []
    for chunk in range(record.chunk_count):
        start, count = record.chunk_span(chunk)
        message = options.chunk_job(
            record.job_id,
            chunk,
            inputs[start : start + count],
            enqueued_ms=enqueued,
            deadline_ms=record.expires_at * 1000,
        )
        chunks.append(NewJob(record.chunk_queue_id(chunk), encode_job(message), enqueued, expires_ms, count))
    admitted = (await queue.enqueue(chunks, settings.max_queued_job_texts, enqueued)).admitted
    if not all(admitted):
        await queue.withdraw([chunk.job_id for chunk, ok in zip(chunks, admitted, strict=True) if ok])
        raise ServiceError(ErrorKind.RATE_LIMITED, "too much job work is queued right now; retry later")


@router.get(
    "/{job_id}", response_class=Response, responses={200: {"model": JobObject}, **error_responses(*OBJECT_ERRORS)}
)
async def get_job(request: Request, job_id: str) -> Response:
    """The job, with its status and progress."""
    return json_response(job_object(await _job_of(request, job_id)))


@router.post(
    "/{job_id}/cancel",
    response_class=Response,
    responses={200: {"model": JobObject}, **error_responses(*OBJECT_ERRORS)},
)
async def cancel_job(request: Request, job_id: str) -> Response:
    """Stop the chunks not yet started; a finished job stays as it is."""
    record = await _job_of(request, job_id)
    if record.status() in ("queued", "in_progress"):
        store: JobStore = request.app.state.jobs
        queue: JobQueue = request.app.state.chunk_queue
        await store.cancel(job_id)
        await queue.withdraw([record.chunk_queue_id(chunk) for chunk in range(record.chunk_count)])
        record = await _job_of(request, job_id)
    return json_response(job_object(record))


@router.delete(
    "/{job_id}",
    response_class=Response,
    responses={200: {"model": DeletedJob}, **error_responses(*OBJECT_ERRORS)},
)
async def delete_job(request: Request, job_id: str) -> Response:
    """Delete the job and its results, giving their room in the job store back; chunks not yet started never
    run, and those running store nothing."""
    record = await _job_of(request, job_id)
    store: JobStore = request.app.state.jobs
    queue: JobQueue = request.app.state.chunk_queue
    admission: Admission = request.app.state.admission
    await queue.withdraw([record.chunk_queue_id(chunk) for chunk in range(record.chunk_count)])
    await store.delete(job_id, record.chunk_count)
    await admission.release(job_id)
    return json_response({"id": job_id, "object": "embedding.job.deleted", "deleted": True})


@router.get(
    "/{job_id}/result",
    response_class=StreamingResponse,
    responses={200: {"model": EmbeddingResponse}, **error_responses(*RESULT_ERRORS)},
)
async def get_result(
    request: Request,
    job_id: str,
    offset: int = Query(0, ge=0, description="index of the first embedding"),
    limit: int | None = Query(None, ge=1, description="most embeddings to return (default: all)"),
) -> StreamingResponse:
    """The OpenAI-shaped embeddings response in input order, streamed; inputs that failed are left out."""
    record = await _job_of(request, job_id)
    status = record.status()
    if status == "expired":
        raise ServiceError(ErrorKind.EXPIRED, "this job's results have expired")
    if record.lost_chunks:
        raise _lost(record)
    if status not in ("completed", "failed"):
        raise ServiceError(ErrorKind.NOT_READY, f"the job is {status}; results come when it has completed")
    end = record.total if limit is None else min(record.total, offset + limit)
    return StreamingResponse(_result_body(request.app.state.jobs, record, offset, end), media_type="application/json")


async def _result_body(store: JobStore, record: JobRecord, start: int, end: int) -> AsyncIterator[bytes]:
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
            rows = decode_vectors(stored, count)
            rows = rows[max(0, start - chunk_start) : max(0, end - chunk_start)]
            if len(rows):
                first_index = max(start, chunk_start)
                body = orjson.dumps(
                    embedding_items(rows, encoding, first_index, output_dtype), option=orjson.OPT_SERIALIZE_NUMPY
                )
                yield body[1:-1] if first else b"," + body[1:-1]
                first = False
    tail = {"model": record.model, "usage": usage(record.prompt_tokens)}
    yield b"]," + orjson.dumps(tail)[1:]
