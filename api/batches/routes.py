"""``/v1/batches``: OpenAI's Batch API for ``/v1/embeddings``, on the asynchronous jobs' queue and workers.

Creating a batch reads its input file twice, a segment at a time: once to validate it (``api.batches.input``), once
to write its chunks (``api.batches.submit``). It answers when both are done: in progress, or failed with the lines
that were wrong. Everything after that is in Redis, so any API process answers for any batch.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from api.auth import owner_of
from api.batches.input import validate
from api.batches.plan import chunk_starts
from api.batches.schemas import BatchList, BatchObject, BatchRequest
from api.batches.store import BatchRecord, BatchStore
from api.batches.submit import chunk_ids, submit_batch
from api.errors import (
    BATCH_CREATION_ERRORS,
    OBJECT_ERRORS,
    READ_ERRORS,
    error_responses,
)
from api.files.store import PURPOSE, FileStore
from api.http import json_response, parse_body, parse_json
from api.ids import BATCH_ID_PATTERN, BATCH_ID_PREFIX, check_owner, made_at_ms, new_id, owned
from api.listing import kept_since_ms, page
from shared import keys
from shared.errors import ErrorKind, ServiceError
from shared.job_queue import JobQueue
from shared.settings import Settings

router = APIRouter(prefix="/v1/batches", tags=["batches"])

_BATCH_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": BatchRequest.model_json_schema()}}}
}


@router.post(
    "",
    openapi_extra=_BATCH_BODY,
    response_class=Response,
    responses={200: {"model": BatchObject}, **error_responses(*BATCH_CREATION_ERRORS)},
)
async def create_batch(request: Request) -> Response:
    """Validate the input file and queue its requests; a file with problems makes a failed batch naming the lines."""
    settings: Settings = request.app.state.settings
    files: FileStore = request.app.state.files
    batches: BatchStore = request.app.state.batches
    batch_request = parse_body(BatchRequest, parse_json(await request.body()))
    await request.app.state.admission.check_store()
    owner = owner_of(request.state)
    upload = await files.get(batch_request.input_file_id)
    if upload is None or not check_owner(request.state, upload.owner) or upload.purpose != PURPOSE:
        message = f"no file with id {batch_request.input_file_id!r} and purpose {PURPOSE!r}"
        raise ServiceError(ErrorKind.NOT_FOUND, message, "input_file_id")
    found = await validate(files.segments(upload.file_id), settings)
    created = int(time.time())
    errors = [error.as_object() for error in found.errors]
    if found.error_count > len(found.errors):
        more = found.error_count - len(found.errors)
        errors.append({"code": "more_errors", "line": None, "message": f"and {more} more errors", "param": None})
    starts = [] if errors else chunk_starts(found.shapes, settings.job_chunk_size)
    expires_at = created + settings.batch_completion_window_s
    record = BatchRecord(
        batch_id=new_id(BATCH_ID_PREFIX),
        owner=owner,
        model=found.model,
        input_file_id=upload.file_id,
        created_at=created,
        expires_at=expires_at,
        kept_until=expires_at + settings.job_result_ttl_s,
        total=found.requests,
        chunks=len(starts),
        metadata=batch_request.metadata,
        errors=errors,
        failed_at=created if errors else None,
    )
    if errors:
        await batches.create(record)
    else:
        await submit_batch(request.app.state, record, upload, starts, found.inputs)
    return json_response(await _object(request, record.batch_id))


@router.get("", response_class=Response, responses={200: {"model": BatchList}, **error_responses(*READ_ERRORS)})
async def list_batches(
    request: Request,
    after: str | None = Query(None, pattern=BATCH_ID_PATTERN, description="the last id of the previous page"),
    limit: int = Query(20, ge=1, le=100),
) -> Response:
    """The caller's batches, newest first."""
    settings: Settings = request.app.state.settings
    batches: BatchStore = request.app.state.batches

    async def resolve(ids: list[str]) -> list[dict[str, Any] | None]:
        return [None if record is None else record.as_object() for record in await batches.get_many(ids)]

    owner = owner_of(request.state)
    body = await page(
        request.app.state.redis,
        keys.owner_batches(owner),
        after=after,
        after_made_at_ms=None if after is None else made_at_ms(BATCH_ID_PREFIX, after),
        limit=limit,
        newest_first=True,
        older_than_kept_ms=kept_since_ms(settings, int(time.time())),
        resolve=resolve,
    )
    return json_response(body)


@router.get(
    "/{batch_id}",
    response_class=Response,
    responses={200: {"model": BatchObject}, **error_responses(*OBJECT_ERRORS)},
)
async def get_batch(request: Request, batch_id: str) -> Response:
    return json_response(await _object(request, batch_id))


@router.post(
    "/{batch_id}/cancel",
    response_class=Response,
    responses={200: {"model": BatchObject}, **error_responses(*OBJECT_ERRORS)},
)
async def cancel_batch(request: Request, batch_id: str) -> Response:
    """Take its queued chunks off the queue; chunks already running finish (``cancelling``), then ``cancelled``.
    A batch that has ended stays as it is."""
    record = await _batch_of(request, batch_id)
    if record.status() == "in_progress":
        batches: BatchStore = request.app.state.batches
        queue: JobQueue = request.app.state.chunk_queue
        entries = await batches.manifest(batch_id, 0, record.chunks)
        withdrawn = await queue.withdraw(chunk_ids(batch_id, entries))
        await batches.cancel(record, withdrawn)
    return json_response(await _object(request, batch_id))


async def _batch_of(request: Request, batch_id: str) -> BatchRecord:
    batches: BatchStore = request.app.state.batches
    return await owned(request, await batches.get(batch_id), BATCH_ID_PREFIX, batch_id, "batch")


async def _object(request: Request, batch_id: str) -> dict[str, Any]:
    return (await _batch_of(request, batch_id)).as_object()
