"""Creating asynchronous work, an embeddings job (``api.jobs.submit``) or a batch (``api.batches.submit``): the one
path both take.

``create_work`` estimates the room the work will keep in the result store (``Footprint``: its vectors, its inputs
while they wait, its record; ``shared.storage``) and reserves it (``Admission.reserve``: 507 if it does not fit),
then creates the work's record and enqueues its chunks on the chunk queue (through ``Chunks``: 429 past the queue's
backlog bound, ``queue_full``). On any failure (a refusal, Redis, the request's cancellation: any BaseException) the
chunks already enqueued are withdrawn, the record deleted and the reservation released, and the failure is raised:
work is created whole or not at all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable

from starlette.datastructures import State

from api.admission import Admission
from shared.errors import ErrorKind, ServiceError
from shared.job_queue import JobQueue, NewJob
from shared.storage import RECORD_BYTES, results_bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Footprint:
    """What a piece of work will keep in the result store."""

    #: the model its vectors come from, and the dimensions asked for (None: as a live worker reports the model)
    model: str
    dimensions: int | None
    #: how many vectors it stores, in how many chunks
    vectors: int
    chunks: int
    #: what its inputs take while they wait (its texts, or its input file)
    input_bytes: int

    async def store_bytes(self, admission: Admission) -> int:
        """The bytes to reserve: its vectors, its inputs and its record."""
        dimensions = await admission.dimensions(self.model, self.dimensions)
        return results_bytes(self.vectors, dimensions, self.chunks) + self.input_bytes + RECORD_BYTES


def queue_full() -> ServiceError:
    """429: the chunk queue's backlog bound (``MAX_QUEUED_JOB_TEXTS``) refused a chunk."""
    return ServiceError(ErrorKind.RATE_LIMITED, "too much job work is queued right now; retry later")


class Chunks:
    """A work's chunks on their way to the chunk queue, in one enqueue or several; it remembers those admitted, to
    withdraw them if the work's creation fails."""

    def __init__(self, queue: JobQueue, max_queued_texts: int) -> None:
        self._queue = queue
        self._max_queued_texts = max_queued_texts
        self.enqueued: list[str] = []

    async def enqueue(self, chunks: list[NewJob], now_ms: int) -> None:
        """Enqueue ``chunks`` (``now_ms``: their place in the queue); ``queue_full`` if the backlog bound refuses
        any of them."""
        admitted = (await self._queue.enqueue(chunks, self._max_queued_texts, now_ms)).admitted
        self.enqueued += [chunk.job_id for chunk, ok in zip(chunks, admitted, strict=True) if ok]
        if not all(admitted):
            raise queue_full()

    async def withdraw(self) -> None:
        """Take the chunks enqueued so far off the queue."""
        await self._queue.withdraw(self.enqueued)


async def create_work(
    state: State,
    work_id: str,
    footprint: Footprint,
    kept_until_s: int,
    *,
    create: Callable[[], Awaitable[None]],
    enqueue: Callable[[Chunks], Awaitable[None]],
    delete: Callable[[], Awaitable[None]],
) -> None:
    """Create work ``work_id`` whole or not at all: reserve its ``footprint`` in the result store until
    ``kept_until_s``, ``create`` its record, ``enqueue`` its chunks (through the ``Chunks`` given); on any failure,
    withdraw the chunks enqueued, ``delete`` what ``create`` wrote, release the reservation and raise.

    ``state``: the app's (``api.main``): its ``admission``, ``chunk_queue`` and ``settings``.
    """
    admission: Admission = state.admission
    await admission.reserve(work_id, await footprint.store_bytes(admission), kept_until_s)
    chunks = Chunks(state.chunk_queue, state.settings.max_queued_job_texts)
    try:
        await create()
        try:
            await enqueue(chunks)
        except BaseException:
            await chunks.withdraw()
            raise
    except BaseException:
        await delete()
        await admission.release(work_id)
        raise
