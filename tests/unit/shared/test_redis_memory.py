"""On a real redis-server: the eviction guard reads the policy and refuses while Redis evicts; a chunk's results
are stored and counted together or not at all when Redis is out of memory, and a failure is recorded past it."""

import fakeredis
import pytest
import redis.asyncio
from redis.exceptions import OutOfMemoryError

from api.jobs.store import JobStore
from shared import keys, redis_memory
from shared.chunks import ChunkStore
from shared.errors import ErrorKind, ServiceError
from shared.job_queue import FinishedJob, JobQueue, NewJob
from shared.queue_format import queue_job_id
from shared.redis_memory import EvictionGuard
from tests.unit.api.jobs.test_store import record


@pytest.fixture
async def client(redis_url):
    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.mark.parametrize("policy", ["volatile-lru", "allkeys-lru", "allkeys-random", "volatile-ttl"])
async def test_the_guard_refuses_while_redis_evicts_and_rereads_the_policy(client, monkeypatch, policy):
    monkeypatch.setattr(redis_memory, "REFRESH_S", 0.0)
    guard = EvictionGuard(client, allow_evicting=False)
    await guard.check()  # noeviction, Redis' default
    await client.config_set("maxmemory-policy", policy)
    with pytest.raises(ServiceError) as refused:
        await guard.check()
    assert refused.value.kind is ErrorKind.STORE_EVICTS and f"maxmemory-policy {policy}" in refused.value.message
    assert await EvictionGuard(client, allow_evicting=True).safe()
    await client.config_set("maxmemory-policy", "noeviction")
    assert await guard.safe()


async def test_without_info_or_config_the_policy_is_unknown_and_not_refused():
    client = fakeredis.FakeAsyncRedis()  # answers neither INFO nor CONFIG GET
    info = await redis_memory.read_memory_info(client)
    assert info.policy == "" and not info.evicts
    await client.aclose()


async def fill(client) -> None:
    """Redis over its maxmemory for good: data first, then a cap below what it holds (noeviction keeps it all)."""
    for i in range(64):
        await client.set(f"fill:{i}", b"x" * 65536)
    await client.config_set("maxmemory", 1 << 20)
    with pytest.raises(OutOfMemoryError):
        await client.set("probe", b"x")


async def test_out_of_memory_a_chunk_is_neither_stored_nor_counted(client):
    store = JobStore(client, ChunkStore(client))
    await store.create(record())
    await fill(client)
    with pytest.raises(OutOfMemoryError):
        await store.chunks.done_in(
            None, "embjob_1", 0, vectors=b"\1" * 64, completed=4, failed=0, prompt_tokens=4, expires_at_s=2**31
        )
    job = await store.get("embjob_1")
    assert job is not None and (job.completed, job.failed) == (0, 0)
    assert await store.chunks.vectors("embjob_1", [0]) == [None]
    # a failure is a few bytes: it is recorded past maxmemory, so the job still ends
    await store.chunks.done_in(
        None,
        "embjob_1",
        0,
        vectors=None,
        completed=0,
        failed=4,
        prompt_tokens=0,
        expires_at_s=2**31,
        error="the result store was full",
        despite_oom=True,
    )
    job = await store.get("embjob_1")
    assert job is not None and job.failed == 4 and job.chunk_errors == {0: "the result store was full"}


async def test_out_of_memory_replies_and_releases_still_go_through(client):
    """Replies are tiny and read at once; the backlog releases grow nothing: a full Redis must not make waiting
    requests time out or the backlog (the whole, or a key's share) leak."""
    queue = JobQueue.sync(client)
    finished, withdrawn = queue_job_id("r1", 3, "0123456789abcdef"), queue_job_id("r2", 2, "0123456789abcdef")
    new_jobs = [NewJob(finished, (b"m",), 1, 60_000, 3), NewJob(withdrawn, (b"m",), 1, 60_000, 2)]
    await queue.enqueue(new_jobs, backlog_limit=100, now_ms=1)
    await queue.claim(1, 100, lease_ms=10_000, now_ms=2)
    await fill(client)
    with pytest.raises(OutOfMemoryError):
        await client.lpush("emb:reply:a", b"plain push")
    await queue.finish([FinishedJob(finished, "emb:reply:a", b"reply")])
    assert await client.lrange("emb:reply:a", 0, -1) == [b"reply"]
    assert int(await client.get(keys.QUEUED_TEXTS)) == 2
    assert await queue.withdraw([withdrawn]) == 1
    assert int(await client.get(keys.QUEUED_TEXTS)) == 0
    assert await client.hgetall(keys.QUEUED_TEXTS_PER_KEY) == {}
    assert await client.zcard(keys.SYNC_QUEUE) == 0


async def test_a_failed_refresh_keeps_the_last_reading(client, monkeypatch):
    """Redis failing over for a moment must not turn every request into an error of the guard's."""
    monkeypatch.setattr(redis_memory, "REFRESH_S", 0.0)
    guard = EvictionGuard(client, allow_evicting=False)
    await guard.check()

    async def unreachable(redis):
        raise ConnectionError("Connection refused")

    monkeypatch.setattr(redis_memory, "read_memory_info", unreachable)
    await guard.check()
    with pytest.raises(ConnectionError):
        await EvictionGuard(client, allow_evicting=False).check()
