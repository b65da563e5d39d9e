"""Asynchronous embedding jobs: submit many texts, poll progress, fetch (streamed, pageable) results, cancel."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from typing import cast

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from redis.asyncio import Redis

from api.auth import owner_of
from api.schemas import EmbeddingResponse, JobObject, JobRequest, error_responses, parse_job_request
from shared import keys
from shared.arq_batch import ArqBatch, NewJob, job_id_for
from shared.errors import ErrorKind, ServiceError
from shared.jobs import JobRecord, JobStore
from shared.openai_json import embedding_items, usage
from shared.protocol import EmbedJob, EncodingFormat, encode_job
from shared.settings import Settings
from shared.workers import now_ms

router = APIRouter(prefix="/v1/embeddings/jobs", tags=["jobs"])

#: chunks fetched from Redis per round trip while streaming a result
_CHUNKS_PER_FETCH = 4

_JOB_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": JobRequest.model_json_schema()}}}
}


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _chunk_ids(record: JobRecord) -> list[str]:
    return [job_id_for(f"{record.job_id}-{c}", record.chunk_span(c)[1]) for c in range(record.chunks)]


async def _job_of(request: Request, job_id: str) -> JobRecord:
    record = await JobStore(request.app.state.redis).get(job_id)
    if record is None or record.owner != owner_of(request.state):  # another key's job is not there for you
        raise ServiceError(ErrorKind.NOT_FOUND, f"no job with id {job_id!r}")
    return record


@router.post(
    "",
    status_code=202,
    openapi_extra=_JOB_BODY,
    response_class=Response,
    responses={202: {"model": JobObject}, **error_responses(400, 401, 404, 413, 429, 503)},
)
async def create_job(request: Request) -> Response:
    """Queue a job; answers 202 at once. The same ``Idempotency-Key`` again returns the same job."""
    settings: Settings = request.app.state.settings
    redis: Redis = request.app.state.redis
    try:
        payload = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise ServiceError(ErrorKind.INVALID_REQUEST, "the request body is not valid JSON") from None
    job_request = parse_job_request(payload, settings)
    owner = owner_of(request.state)
    job_id = "embjob_" + secrets.token_hex(16)
    idempotency_key = request.headers.get("idempotency-key")
    if idempotency_key is None:
        return _json((await _submit(redis, settings, owner, job_id, job_request)).to_api(), 202)
    if not 0 < len(idempotency_key) <= 256:
        raise ServiceError(ErrorKind.INVALID_REQUEST, "Idempotency-Key must be 1 to 256 characters")
    key = keys.idempotency(owner, idempotency_key)
    if not await redis.set(key, job_id, nx=True, ex=settings.job_result_ttl_s):
        existing = await redis.get(key)
        if existing is not None:
            return _json((await _job_of(request, existing.decode())).to_api(), 202)
    try:
        record = await _submit(redis, settings, owner, job_id, job_request)
    except ServiceError:
        await redis.delete(key)  # nothing was created under it
        raise
    return _json(record.to_api(), 202)


async def _submit(redis: Redis, settings: Settings, owner: str, job_id: str, job_request: JobRequest) -> JobRecord:
    input_kind, inputs = job_request.input
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
        dimensions=job_request.dimensions,
        metadata=job_request.metadata or {},
    )
    store = JobStore(redis)
    await store.create(record)
    enqueued = now_ms()
    chunks = []
    for chunk, arq_job_id in enumerate(_chunk_ids(record)):
        start, count = record.chunk_span(chunk)
        message = EmbedJob(
            request_id=f"{job_id}-{chunk}",
            model=record.model,
            input_kind=input_kind,
            inputs=inputs[start : start + count],
            dimensions=record.dimensions,
            truncate=settings.truncate_inputs if job_request.truncate is None else job_request.truncate,
            reply_to="",
            enqueued_ms=enqueued,
            deadline_ms=record.expires_at * 1000,
            job_id=job_id,
            chunk=chunk,
        )
        expires_ms = (record.expires_at - created) * 1000
        chunks.append(NewJob(arq_job_id, encode_job(message), enqueued, expires_ms, count))
    queue = ArqBatch.chunks(redis)
    admitted = await queue.enqueue(chunks, settings.max_queued_job_texts, enqueued)
    if not all(admitted):
        await queue.withdraw([chunk.job_id for chunk, ok in zip(chunks, admitted, strict=True) if ok])
        await store.delete(job_id)
        raise ServiceError(ErrorKind.RATE_LIMITED, "too much job work is queued right now; retry later")
    return record


@router.get("/{job_id}", response_class=Response, responses={200: {"model": JobObject}, **error_responses(401, 404)})
async def get_job(request: Request, job_id: str) -> Response:
    """The job, with its status and progress."""
    return _json((await _job_of(request, job_id)).to_api())


@router.post(
    "/{job_id}/cancel", response_class=Response, responses={200: {"model": JobObject}, **error_responses(401, 404)}
)
async def cancel_job(request: Request, job_id: str) -> Response:
    """Stop the chunks not yet started; a finished job stays as it is."""
    record = await _job_of(request, job_id)
    if record.status() in ("queued", "in_progress"):
        redis: Redis = request.app.state.redis
        await JobStore(redis).cancel(job_id)
        await ArqBatch.chunks(redis).withdraw(_chunk_ids(record))
        record = await _job_of(request, job_id)
    return _json(record.to_api())


@router.get(
    "/{job_id}/result",
    response_class=StreamingResponse,
    responses={200: {"model": EmbeddingResponse}, **error_responses(400, 401, 404, 409, 410)},
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
    if status not in ("completed", "failed"):
        raise ServiceError(ErrorKind.NOT_READY, f"the job is {status}; results come when it has completed")
    end = record.total if limit is None else min(record.total, offset + limit)
    return StreamingResponse(
        _result_body(JobStore(request.app.state.redis), record, offset, end), media_type="application/json"
    )


async def _result_body(store: JobStore, record: JobRecord, start: int, end: int) -> AsyncIterator[bytes]:
    encoding = cast(EncodingFormat, record.encoding_format)
    yield b'{"object":"list","data":['
    first = True
    chunks = list(range(start // record.chunk_size, -(-end // record.chunk_size))) if start < end else []
    for group_start in range(0, len(chunks), _CHUNKS_PER_FETCH):
        group = chunks[group_start : group_start + _CHUNKS_PER_FETCH]
        for chunk, vectors in zip(group, await store.chunk_vectors(record.job_id, group), strict=True):
            if vectors is None:
                continue  # a failed chunk: its inputs are listed in the job's errors
            chunk_start, count = record.chunk_span(chunk)
            dim = len(vectors) // 4 // count
            items = embedding_items(vectors, count, dim, encoding, chunk_start)
            items = items[max(0, start - chunk_start) : max(0, end - chunk_start)]
            if items:
                body = orjson.dumps(items, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1]
                yield body if first else b"," + body
                first = False
    tail = {"model": record.model, "usage": usage(record.prompt_tokens)}
    yield b"]," + orjson.dumps(tail)[1:]
