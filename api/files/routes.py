"""``/v1/files``: OpenAI's files API, for batch input files and batch output files.

Uploads (multipart, ``purpose=batch``) are stored a segment at a time (``api.files.store``). A batch's output and error
files are listed and read like uploads, but rendered from the batch when read (``api.batches.output``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any, Literal, NoReturn

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.datastructures import UploadFile

from api.auth import owner_of
from api.batches.output import file_size, lost_requests, render
from api.batches.store import BatchRecord, BatchStore
from api.errors import OBJECT_ERRORS, UPLOAD_ERRORS, WRITE_ERRORS, error_responses, results_lost
from api.files.schemas import DeletedFile, FileList, FileObject
from api.files.store import PURPOSE, FileRecord, FileStore, file_object
from api.http import json_response
from api.ids import FILE_ID_PATTERN, OUTPUT, batch_of_file, check_owner, file_made_at_ms, raise_missing
from api.listing import kept_since_ms, page
from api.openapi import links
from shared import keys
from shared.errors import ErrorKind, ServiceError
from shared.settings import Settings

router = APIRouter(prefix="/v1/files", tags=["files"])

#: batch files a listing measures at once (a few round trips each, the first time one is listed)
_MEASURED_AT_ONCE = 16

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "additionalProperties": False,
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "JSONL, one request a line"},
                        "purpose": {"type": "string", "enum": [PURPOSE]},
                    },
                }
            }
        },
    }
}


@router.post(
    "",
    openapi_extra=_UPLOAD_BODY,
    response_class=Response,
    responses={
        200: {
            "model": FileObject,
            "links": links(
                "file_id",
                GetFile=("GET", "/v1/files/{file_id}"),
                GetFileContent=("GET", "/v1/files/{file_id}/content"),
                DeleteFile=("DELETE", "/v1/files/{file_id}"),
            ),
        },
        **error_responses(*UPLOAD_ERRORS),
    },
)
async def upload_file(request: Request) -> Response:
    """Upload a batch input file (``purpose=batch``); its lines are checked when a batch is created from it."""
    settings: Settings = request.app.state.settings
    files: FileStore = request.app.state.files
    async with request.form(max_files=1, max_fields=8) as form:
        unknown = sorted(set(form.keys()) - {"purpose", "file"})
        if unknown:
            raise ServiceError(ErrorKind.INVALID_REQUEST, f"unrecognized request argument supplied: {unknown[0]}")
        purpose, upload = form.get("purpose"), form.get("file")
        if purpose != PURPOSE:
            raise ServiceError(ErrorKind.INVALID_REQUEST, f"purpose must be {PURPOSE!r}", "purpose")
        if not isinstance(upload, UploadFile):
            raise ServiceError(ErrorKind.INVALID_REQUEST, "file must be a file part of the form", "file")
        filename = (upload.filename or "upload.jsonl")[:256]
        record = await files.create(
            owner_of(request.state), filename, PURPOSE, upload.read, settings.max_batch_file_bytes
        )
    return json_response(record.as_object())


@router.get("", response_class=Response, responses={200: {"model": FileList}, **error_responses(*WRITE_ERRORS)})
async def list_files(
    request: Request,
    purpose: str | None = Query(None, max_length=64),
    limit: int = Query(10_000, ge=1, le=10_000),
    order: Literal["asc", "desc"] = "desc",
    after: str | None = Query(None, pattern=FILE_ID_PATTERN, description="the last id of the previous page"),
) -> Response:
    """The caller's files, newest first by default: uploads, and the output and error files of their batches."""
    settings: Settings = request.app.state.settings
    owner = owner_of(request.state)

    async def resolve(ids: list[str]) -> list[dict[str, Any] | None]:
        found = await _file_objects(request, ids)
        return [item for item in found if item is None or purpose is None or item["purpose"] == purpose]

    body = await page(
        request.app.state.redis,
        keys.owner_files(owner),
        after=after,
        after_made_at_ms=None if after is None else file_made_at_ms(after),
        limit=limit,
        newest_first=order == "desc",
        older_than_kept_ms=kept_since_ms(settings, int(time.time())),
        resolve=resolve,
    )
    return json_response(body)


@router.get(
    "/{file_id}", response_class=Response, responses={200: {"model": FileObject}, **error_responses(*OBJECT_ERRORS)}
)
async def get_file(request: Request, file_id: str) -> Response:
    found = await _file_object(request, file_id)
    if found is None:
        await _missing(request, file_id)
    return json_response(found)


@router.get(
    "/{file_id}/content",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/jsonl": {}}}, **error_responses(*OBJECT_ERRORS)},
)
async def get_file_content(request: Request, file_id: str) -> StreamingResponse:
    """The file's bytes, streamed; a batch's output file is rendered as it streams."""
    derived = batch_of_file(file_id)
    if derived is not None:
        record = await _batch_with_file(request, *derived)
        if record is not None:
            lost = await lost_requests(request.app.state.batches, request.app.state.chunks, record)
            if lost:
                raise results_lost("requests", lost)
            stream = render(request.app.state.batches, request.app.state.chunks, record, derived[1])
            return StreamingResponse(stream, media_type="application/jsonl")
    else:
        upload = await _upload(request, file_id)
        if upload is not None:
            files: FileStore = request.app.state.files
            return StreamingResponse(files.segments(file_id), media_type="application/jsonl")
    await _missing(request, file_id)


@router.delete(
    "/{file_id}", response_class=Response, responses={200: {"model": DeletedFile}, **error_responses(*OBJECT_ERRORS)}
)
async def delete_file(request: Request, file_id: str) -> Response:
    derived = batch_of_file(file_id)
    if derived is not None:
        record = await _batch_with_file(request, *derived)
        if record is not None:
            await request.app.state.batches.file_deleted(record, derived[1])
            return json_response({"id": file_id, "object": "file", "deleted": True})
    else:
        upload = await _upload(request, file_id)
        if upload is not None:
            await request.app.state.files.delete(upload)
            return json_response({"id": file_id, "object": "file", "deleted": True})
    await _missing(request, file_id)


async def _upload(request: Request, file_id: str) -> FileRecord | None:
    files: FileStore = request.app.state.files
    record = await files.get(file_id)
    return record if record is not None and check_owner(request.state, record.owner) else None


async def _batch_with_file(request: Request, batch_id: str, which: str) -> BatchRecord | None:
    """The caller's batch whose output ``which`` exists."""
    batches: BatchStore = request.app.state.batches
    record = await batches.get(batch_id)
    return record if record is not None and _has_file(request, record, which) else None


def _has_file(request: Request, record: BatchRecord, which: str) -> bool:
    return check_owner(request.state, record.owner) and record.file_id(which) is not None


async def _file_object(request: Request, file_id: str) -> dict[str, Any] | None:
    return (await _file_objects(request, [file_id]))[0]


async def _file_objects(request: Request, file_ids: list[str]) -> list[dict[str, Any] | None]:
    """The caller's files' objects, None for each that is not there: the records in two round trips, uploads and
    batches; a batch file's size is measured the first time it is asked for."""
    files: FileStore = request.app.state.files
    batches: BatchStore = request.app.state.batches
    derived = [batch_of_file(file_id) for file_id in file_ids]
    upload_ids = [file_id for file_id, batch in zip(file_ids, derived, strict=True) if batch is None]
    uploads = dict(zip(upload_ids, await files.get_many(upload_ids), strict=True))
    batch_ids = list(dict.fromkeys(batch[0] for batch in derived if batch is not None))
    records = dict(zip(batch_ids, await batches.get_many(batch_ids), strict=True))
    found: list[dict[str, Any] | None] = [None] * len(file_ids)
    measured: list[tuple[int, Coroutine[Any, Any, dict[str, Any]]]] = []
    for position, (file_id, batch) in enumerate(zip(file_ids, derived, strict=True)):
        if batch is None:
            upload = uploads[file_id]
            if upload is not None and check_owner(request.state, upload.owner):
                found[position] = upload.as_object()
            continue
        record = records[batch[0]]
        if record is not None and _has_file(request, record, batch[1]):
            measured.append((position, _batch_file_object(request, record, file_id, batch[1])))
    for first in range(0, len(measured), _MEASURED_AT_ONCE):
        group = measured[first : first + _MEASURED_AT_ONCE]
        for (position, _), item in zip(group, await asyncio.gather(*(work for _, work in group)), strict=True):
            found[position] = item
    return found


async def _batch_file_object(request: Request, record: BatchRecord, file_id: str, which: str) -> dict[str, Any]:
    size = record.sizes.get(which)
    if size is None:  # measured once, from the outcomes and not the vectors, then remembered
        size = await file_size(request.app.state.batches, request.app.state.chunks, record, which)
        if size is None:
            size = 0  # its results are lost: its content answers 410
        else:
            await request.app.state.batches.remember_size(record.batch_id, which, size)
    made_at = record.completed_at or record.finished_at or record.expires_at
    filename = f"{record.batch_id}_{'output' if which == OUTPUT else 'error'}.jsonl"
    return file_object(file_id, size, made_at, filename, "batch_output", record.kept_until)


async def _missing(request: Request, file_id: str) -> NoReturn:
    await raise_missing(request.app.state.epochs, "file", file_id, file_made_at_ms(file_id))
