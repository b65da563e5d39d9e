import time

import fakeredis
import pytest

from api.jobs.output import job_object
from api.jobs.store import JobRecord, JobStore
from shared.chunks import ChunkStore
from shared.clock import now_ms
from shared.job_queue import JobQueue, NewJob


def record(**overrides) -> JobRecord:
    now = int(time.time())
    fields = dict(
        job_id="embjob_1",
        owner="o",
        model="m",
        created_at=now,
        expires_at=now + 100,
        total=10,
        chunk_size=4,
        encoding_format="float",
        dimensions=None,
        metadata={"a": "b"},
    )
    return JobRecord(**{**fields, **overrides})


def test_chunks_and_spans():
    job = record()
    assert job.chunk_count == 3
    assert [job.chunk_span(c) for c in range(3)] == [(0, 4), (4, 4), (8, 2)]
    assert [job.chunk_queue_id(c) for c in range(3)] == ["embjob_1-0.4", "embjob_1-1.4", "embjob_1-2.2"]


@pytest.mark.parametrize(
    ("start", "end", "chunks"), [(0, 10, [0, 1, 2]), (3, 5, [0, 1]), (4, 8, [1]), (9, 10, [2]), (5, 5, [])]
)
def test_the_chunks_a_page_touches(start, end, chunks):
    assert list(record().chunks_between(start, end)) == chunks


@pytest.mark.parametrize(
    ("overrides", "status"),
    [
        ({}, "queued"),
        ({"started": True}, "in_progress"),
        ({"started": True, "completed": 8, "failed": 2}, "completed"),
        ({"started": True, "failed": 10}, "failed"),
        ({"cancelled": True}, "cancelled"),
        ({"expires_at": 1}, "expired"),
    ],
)
def test_status(overrides, status):
    assert record(**overrides).status() == status


def test_api_shape_lists_failed_ranges():
    job = job_object(record(started=True, completed=6, failed=4, chunk_errors={1: "boom"}))
    assert job["object"] == "embedding.job" and job["status"] == "completed"
    assert job["request_counts"] == {"total": 10, "completed": 6, "failed": 4}
    assert job["errors"] == [{"offset": 4, "count": 4, "message": "boom"}]


@pytest.fixture
async def redis():
    client = fakeredis.FakeAsyncRedis()
    yield client
    await client.aclose()


async def test_store_round_trip_and_progress_counted_once_per_chunk(redis):
    store = JobStore(redis, ChunkStore(redis))
    await store.create(record())
    for _ in range(2):  # a chunk run twice (its first worker died) counts once
        async with redis.pipeline(transaction=False) as pipe:
            await store.chunks.done_in(
                pipe, "embjob_1", 0, vectors=b"\0" * 16, completed=4, failed=0, prompt_tokens=9, expires_at_s=2**31
            )
            await pipe.execute()
    job = await store.get("embjob_1")
    assert job is not None and (job.completed, job.prompt_tokens, job.completed_at) == (4, 9, None)
    assert await store.chunks.vectors("embjob_1", [0, 1]) == [b"\0" * 16, None]
    async with redis.pipeline(transaction=False) as pipe:
        await store.chunks.done_in(
            pipe, "embjob_1", 1, vectors=None, completed=0, failed=4, prompt_tokens=0, expires_at_s=2**31, error="bad"
        )
        await store.chunks.done_in(
            pipe, "embjob_1", 2, vectors=b"\0" * 8, completed=2, failed=0, prompt_tokens=1, expires_at_s=2**31
        )
        await pipe.execute()
    job = await store.get("embjob_1")
    assert job is not None and job.status() == "completed" and job.completed_at is not None
    assert job.chunk_errors == {1: "bad"} and job.metadata == {"a": "b"}


async def test_the_claim_marks_a_job_started_and_tells_its_chunks_of_a_cancel(redis):
    store = JobStore(redis, ChunkStore(redis))
    job = record()
    await store.create(job)
    queue = JobQueue.chunks(redis)
    chunks = [NewJob(job.chunk_queue_id(c), (b"m",), now_ms(), 60_000, job.chunk_span(c)[1]) for c in range(3)]
    await queue.enqueue(chunks, 1000, now_ms())
    [first] = await queue.claim(1, 100, 10_000, now_ms())
    assert not first.cancelled and (await store.get("embjob_1")).started
    await store.cancel("embjob_1")
    claimed = await queue.claim(2, 100, 10_000, now_ms())
    assert [chunk.cancelled for chunk in claimed] == [True, True]
    cancelled = await store.get("embjob_1")
    assert cancelled is not None and cancelled.started and cancelled.cancelled
    assert await store.get("embjob_other") is None
