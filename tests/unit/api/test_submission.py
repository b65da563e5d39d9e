"""``api.submission``: jobs and batches are created by one path, whole or not at all: the store's room estimated and
reserved, the record created, the chunks enqueued; on any failure the chunks withdrawn, the record deleted and the
reservation released."""

from __future__ import annotations

import asyncio

import pytest
from starlette.datastructures import State

from api.submission import Chunks, Footprint, create_work
from shared import keys
from shared.errors import ErrorKind, ServiceError
from shared.job_queue import JobQueue, NewJob
from shared.settings import Settings
from shared.storage import RECORD_BYTES, VALUE_BYTES

UNTIL = 2_000_000_000


class FakeAdmission:
    """Records what is reserved and released; a worker reports 8 dimensions for every model."""

    def __init__(self, events: list[tuple[object, ...]], *, room: bool = True) -> None:
        self.events = events
        self.room = room

    async def dimensions(self, model: str, requested: int | None) -> int:
        return 8 if requested is None else requested

    async def reserve(self, owner_id: str, nbytes: int, expires_at_s: int) -> None:
        if not self.room:
            raise ServiceError(ErrorKind.INSUFFICIENT_STORAGE, "the job store is full")
        self.events.append(("reserve", owner_id, nbytes, expires_at_s))

    async def release(self, owner_id: str) -> None:
        self.events.append(("release", owner_id))


@pytest.fixture
def events() -> list[tuple[object, ...]]:
    return []


def app_state(redis, events, *, max_texts: int = 10, room: bool = True) -> State:
    settings = Settings(_env_file=None, max_queued_job_texts=max_texts)
    return State(
        {"admission": FakeAdmission(events, room=room), "chunk_queue": JobQueue.chunks(redis), "settings": settings}
    )


def chunk(work_id: str, index: int, texts: int) -> NewJob:
    return NewJob(f"{work_id}-{index}.{texts}", (b"message",), 1000, 60_000, texts)


async def queued(redis) -> list[str]:
    return [job_id.decode() for job_id in await redis.zrange(keys.CHUNK_QUEUE, 0, -1)]


def steps(events, *, fail_create: BaseException | None = None, chunks: list[list[NewJob]] | None = None):
    """The record's create and delete, recorded; ``chunks``: what each enqueue call enqueues."""

    async def create() -> None:
        events.append(("create",))
        if fail_create is not None:
            raise fail_create

    async def enqueue(queue: Chunks) -> None:
        for group in chunks or []:
            await queue.enqueue(group, 5)
            events.append(("enqueued", [job.job_id for job in group]))

    async def delete() -> None:
        events.append(("delete",))

    return {"create": create, "enqueue": enqueue, "delete": delete}


FOOTPRINT = Footprint("m", None, vectors=6, chunks=2, input_bytes=100)


async def test_work_is_reserved_created_and_enqueued(redis, events):
    groups = [[chunk("w", 0, 3)], [chunk("w", 1, 3)]]  # a batch enqueues in groups
    await create_work(app_state(redis, events), "w", FOOTPRINT, UNTIL, **steps(events, chunks=groups))
    held = 6 * 8 * VALUE_BYTES + 2 * RECORD_BYTES + 100 + RECORD_BYTES
    assert events == [
        ("reserve", "w", held, UNTIL),
        ("create",),
        ("enqueued", ["w-0.3"]),
        ("enqueued", ["w-1.3"]),
    ]
    assert await queued(redis) == ["w-0.3", "w-1.3"]


async def test_the_dimensions_asked_for_size_the_reservation(redis, events):
    footprint = Footprint("m", 1024, vectors=1, chunks=1, input_bytes=0)
    await create_work(app_state(redis, events), "w", footprint, UNTIL, **steps(events))
    assert events[0] == ("reserve", "w", 1024 * VALUE_BYTES + 2 * RECORD_BYTES, UNTIL)


async def test_a_full_chunk_queue_is_429_and_leaves_nothing_behind(redis, events):
    groups = [[chunk("w", 0, 6)], [chunk("w", 1, 3), chunk("w", 2, 3)]]  # the bound is 10 texts
    with pytest.raises(ServiceError) as refused:
        await create_work(app_state(redis, events), "w", FOOTPRINT, UNTIL, **steps(events, chunks=groups))
    assert refused.value.kind is ErrorKind.RATE_LIMITED
    assert refused.value.message == "too much job work is queued right now; retry later"
    assert [event[0] for event in events] == ["reserve", "create", "enqueued", "delete", "release"]
    assert await queued(redis) == []  # the first group's chunk and the second's admitted one are withdrawn
    assert int(await redis.get(keys.QUEUED_CHUNK_TEXTS) or 0) == 0


@pytest.mark.parametrize("failure", [RuntimeError("Redis went away"), asyncio.CancelledError()])
async def test_any_failure_deletes_the_record_and_releases_the_room(redis, events, failure):
    with pytest.raises(type(failure)):
        await create_work(app_state(redis, events), "w", FOOTPRINT, UNTIL, **steps(events, fail_create=failure))
    assert [event[0] for event in events] == ["reserve", "create", "delete", "release"]


async def test_a_failed_withdrawal_still_deletes_and_releases(redis, events, monkeypatch):
    async def unreachable(self: Chunks) -> None:
        raise ConnectionError("Redis went away")

    monkeypatch.setattr(Chunks, "withdraw", unreachable)
    groups = [[chunk("w", 0, 6), chunk("w", 1, 6)]]  # the second is refused: the queue is withdrawn from
    with pytest.raises(ConnectionError):
        await create_work(app_state(redis, events), "w", FOOTPRINT, UNTIL, **steps(events, chunks=groups))
    assert [event[0] for event in events] == ["reserve", "create", "delete", "release"]


async def test_no_room_in_the_store_creates_nothing(redis, events):
    with pytest.raises(ServiceError) as refused:
        state = app_state(redis, events, room=False)
        await create_work(state, "w", FOOTPRINT, UNTIL, **steps(events, chunks=[[chunk("w", 0, 1)]]))
    assert refused.value.kind is ErrorKind.INSUFFICIENT_STORAGE
    assert events == [] and await queued(redis) == []


async def test_chunks_remember_what_was_admitted(redis):
    chunks = Chunks(JobQueue.chunks(redis), 4)
    await chunks.enqueue([chunk("w", 0, 2)], 5)
    with pytest.raises(ServiceError):
        await chunks.enqueue([chunk("w", 1, 2), chunk("w", 2, 2)], 6)
    assert chunks.enqueued == ["w-0.2", "w-1.2"]
    await chunks.withdraw()
    assert await queued(redis) == []
