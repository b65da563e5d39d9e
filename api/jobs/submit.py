"""Submit an embeddings job: its record (``api.jobs.store``) and one ``EmbedChunk`` per ``JOB_CHUNK_SIZE`` inputs on
the chunk queue, created whole or not at all (``api.submission``)."""

from __future__ import annotations

import functools
import time

from starlette.datastructures import State

from api.embeddings.options import EmbedOptions
from api.jobs.schemas import JobRequest
from api.jobs.store import JobRecord, JobStore
from api.submission import Chunks, Footprint, create_work
from shared.clock import now_ms
from shared.job_queue import NewJob
from shared.protocol import encode_job
from shared.settings import Settings
from shared.storage import input_bytes


async def submit_job(state: State, owner: str, job_id: str, job_request: JobRequest) -> JobRecord:
    """Create job ``job_id`` of ``owner`` for ``job_request``; its record, as created. ``state``: the app's."""
    settings: Settings = state.settings
    store: JobStore = state.jobs
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
    footprint = Footprint(record.model, record.dimensions, record.total, record.chunk_count, input_bytes(inputs))
    await create_work(
        state,
        job_id,
        footprint,
        record.expires_at,
        create=functools.partial(store.create, record),
        enqueue=functools.partial(_enqueue_chunks, record, job_request, settings),
        delete=functools.partial(store.delete, job_id),
    )
    return record


async def _enqueue_chunks(record: JobRecord, job_request: JobRequest, settings: Settings, chunks: Chunks) -> None:
    options = EmbedOptions.of(job_request)
    inputs = job_request.input[1]
    enqueued = now_ms()
    expires_ms = (record.expires_at - record.created_at) * 1000
    new_chunks = []
    for chunk in range(record.chunk_count):
        start, count = record.chunk_span(chunk)
        message = options.chunk_job(
            record.job_id,
            chunk,
            inputs[start : start + count],
            enqueued_ms=enqueued,
            deadline_ms=record.expires_at * 1000,
        )
        new_chunks.append(NewJob(record.chunk_queue_id(chunk), (encode_job(message),), enqueued, expires_ms, count))
    await chunks.enqueue(new_chunks, enqueued)
