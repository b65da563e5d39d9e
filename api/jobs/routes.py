"""Asynchronous embedding jobs: submit many texts, poll progress, fetch (streamed, pageable) results, cancel.

The routes only: a job is submitted by ``api.jobs.submit`` and shown by ``api.jobs.output``.
"""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from redis.asyncio import Redis

from api.admission import Admission
from api.auth import owner_of
from api.embeddings.schemas import EmbeddingResponse
from api.errors import JOB_CREATION_ERRORS, OBJECT_ERRORS, RESULT_ERRORS, error_responses
from api.http import json_response, parse_json
from api.ids import JOB_ID_PREFIX, new_id, owned
from api.jobs.output import job_object, lost, result_body
from api.jobs.schemas import DeletedJob, JobObject, JobRequest, parse_job_request
from api.jobs.store import JobRecord, JobStore
from api.jobs.submit import submit_job
from api.openapi import links
from shared import keys
from shared.errors import ErrorKind, ServiceError
from shared.job_queue import JobQueue
from shared.settings import Settings

router = APIRouter(prefix="/v1/embeddings/jobs", tags=["jobs"])

_JOB_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": JobRequest.model_json_schema()}}}
}


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
        return json_response(job_object(await submit_job(request.app.state, owner, job_id, job_request)), 202)
    if not 0 < len(idempotency_key) <= 256:
        raise ServiceError(ErrorKind.INVALID_REQUEST, "Idempotency-Key must be 1 to 256 characters")
    key = keys.idempotency(owner, idempotency_key)
    if not await redis.set(key, job_id, nx=True, ex=settings.job_result_ttl_s):
        existing = await redis.get(key)
        if existing is not None:
            return json_response(job_object(await _job_of(request, existing.decode())), 202)
    try:
        record = await submit_job(request.app.state, owner, job_id, job_request)
    except ServiceError:
        await redis.delete(key)  # nothing was created under it
        raise
    return json_response(job_object(record), 202)


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
        raise lost(record)
    if status not in ("completed", "failed"):
        raise ServiceError(ErrorKind.NOT_READY, f"the job is {status}; results come when it has completed")
    end = record.total if limit is None else min(record.total, offset + limit)
    return StreamingResponse(result_body(request.app.state.jobs, record, offset, end), media_type="application/json")
