import fakeredis
import pytest
from arq.jobs import Job

from shared import keys
from shared.job_queue import FinishedJob, JobQueue, NewJob, deserialize_arq_job, queue_job_id
from tests.fakes import fake_redis_factory


@pytest.fixture
async def redis():
    client = fake_redis_factory(fakeredis.FakeServer())(None)
    yield client
    await client.aclose()


def new_job(i: int, texts: int = 1) -> NewJob:
    return NewJob(job_id=f"j{i}", message=f"m{i}".encode(), enqueued_ms=1000 + i, expires_ms=60_000, texts=texts)


async def test_enqueued_jobs_are_arq_jobs(redis):
    enqueued = await JobQueue.sync(redis).enqueue([new_job(1), new_job(2)], backlog_limit=100, now_ms=5)
    assert enqueued.admitted == [True, True]
    assert enqueued.epoch == (await redis.get("emb:epoch")).decode()  # the first write made this Redis's epoch
    info = await Job("j1", redis, _queue_name="emb:queue:sync", _deserializer=deserialize_arq_job).info()
    assert info is not None
    assert (info.function, list(info.args), info.enqueue_time.timestamp()) == ("embed", [b"m1"], 1.001)
    assert await redis.zrange("emb:queue:sync", 0, -1) == [b"j1", b"j2"]
    assert int(await redis.get("emb:queued-texts")) == 2


async def test_every_enqueue_of_one_redis_life_names_the_same_epoch(redis):
    arq = JobQueue.sync(redis)
    first = await arq.enqueue([new_job(1)], backlog_limit=100, now_ms=5)
    assert (await JobQueue.chunks(redis).enqueue([new_job(2)], backlog_limit=100, now_ms=6)).epoch == first.epoch
    await redis.flushall()  # a restart without persistence
    assert (await arq.enqueue([new_job(3)], backlog_limit=100, now_ms=7)).epoch != first.epoch


async def test_an_entry_that_is_no_arq_job_is_claimed_as_its_raw_bytes(redis):
    await redis.set("arq:job:evil.1", b"garbage")
    await redis.zadd("emb:queue:sync", {"evil.1": 1})
    [claimed] = await JobQueue.sync(redis).claim(10, 100, lease_ms=1000, now_ms=10)
    assert (claimed.job_id, claimed.message, claimed.texts) == ("evil.1", b"garbage", 1)


async def test_enqueue_refuses_past_the_backlog_bound(redis):
    arq = JobQueue.sync(redis)
    enqueued = await arq.enqueue([new_job(1, 6), new_job(2, 3), new_job(3, 2)], backlog_limit=10, now_ms=5)
    assert enqueued.admitted == [True, True, False]
    assert await redis.exists("arq:job:j3") == 0
    assert int(await redis.get("emb:queued-texts")) == 9


async def test_a_request_larger_than_the_bound_passes_when_nothing_is_queued(redis):
    assert (await JobQueue.sync(redis).enqueue([new_job(1, 50)], backlog_limit=10, now_ms=5)).admitted == [True]


async def test_claim_takes_due_jobs_once_and_counts_attempts(redis):
    arq = JobQueue.sync(redis)
    await arq.enqueue([new_job(i) for i in range(5)], backlog_limit=100, now_ms=5)
    first = await arq.claim(3, 100, lease_ms=10_000, now_ms=10)
    assert [(c.job_id, c.message, c.attempt) for c in first] == [("j0", b"m0", 1), ("j1", b"m1", 1), ("j2", b"m2", 1)]
    second = await arq.claim(10, 100, lease_ms=10_000, now_ms=10)
    assert [c.job_id for c in second] == ["j3", "j4"]
    assert await arq.claim(10, 100, lease_ms=10_000, now_ms=10) == []
    await redis.delete("arq:in-progress:j0")  # its lease lapsed: the worker holding it died...
    assert await arq.claim(10, 100, lease_ms=10_000, now_ms=10) == []
    [again] = await arq.claim(10, 100, lease_ms=10_000, now_ms=10_011)  # ...and its lease's end has passed
    assert (again.job_id, again.attempt) == ("j0", 2)


async def test_claimed_jobs_wait_out_of_reach_until_their_lease_ends(redis):
    arq = JobQueue.sync(redis)
    await arq.enqueue([new_job(1), new_job(2)], backlog_limit=100, now_ms=5)
    await arq.claim(1, 100, lease_ms=1000, now_ms=10)
    assert await redis.zrangebyscore("emb:queue:sync", "-inf", 10) == [b"j2"]  # the next claim scans j2 alone
    assert await redis.zscore("emb:queue:sync", "j1") == 1010
    async with redis.pipeline(transaction=False) as pipe:
        arq.renew_in(pipe, ["j1"], lease_ms=1000, now_ms=500)
        await pipe.execute()
    assert await redis.zscore("emb:queue:sync", "j1") == 1500
    assert 0 < await redis.pttl("arq:in-progress:j1") <= 1000


async def test_an_unclaimed_job_can_be_claimed_again_at_once(redis):
    arq = JobQueue.chunks(redis)
    await arq.enqueue([new_job(1)], backlog_limit=100, now_ms=5)
    [claimed] = await arq.claim(1, 100, lease_ms=10_000, now_ms=10)
    await arq.unclaim(claimed.job_id, now_ms=20)
    [again] = await arq.claim(1, 100, lease_ms=10_000, now_ms=20)
    assert (again.job_id, again.attempt) == ("j1", 2)


async def test_claim_skips_jobs_not_yet_due_and_drops_expired_ones(redis):
    arq = JobQueue.sync(redis)
    await arq.enqueue([new_job(1)], backlog_limit=100, now_ms=50)
    assert await arq.claim(10, 100, lease_ms=1000, now_ms=10) == []
    await redis.delete("arq:job:j1")
    assert await arq.claim(10, 100, lease_ms=1000, now_ms=100) == []
    assert await redis.zcard("emb:queue:sync") == 0


async def test_finish_delivers_replies_and_cleans_up(redis):
    arq = JobQueue.sync(redis)
    await arq.enqueue([new_job(1, 2), new_job(2, 3)], backlog_limit=100, now_ms=5)
    await arq.claim(10, 100, lease_ms=10_000, now_ms=10)
    finished = [FinishedJob("j1", 2, "emb:reply:a", b"r1"), FinishedJob("j2", 3)]
    await arq.finish(finished)
    assert await redis.lrange("emb:reply:a", 0, -1) == [b"r1"]
    assert await redis.zcard("emb:queue:sync") == 0
    assert await redis.exists("arq:job:j1", "arq:in-progress:j1", "arq:retry:j1", "arq:job:j2") == 0
    assert int(await redis.get("emb:queued-texts")) == 0


async def test_claim_keeps_to_a_text_budget_but_takes_at_least_one_job(redis):
    arq = JobQueue.sync(redis)
    jobs = [NewJob(queue_job_id(f"r{i}", 4), b"m", 1000 + i, 60_000, 4) for i in range(4)]
    await arq.enqueue(jobs, backlog_limit=100, now_ms=5)
    assert [c.texts for c in await arq.claim(10, 9, lease_ms=10_000, now_ms=10)] == [4, 4]
    assert len(await arq.claim(10, 1, lease_ms=10_000, now_ms=10)) == 1


async def test_claims_read_the_text_count_from_the_job_id(redis):
    arq = JobQueue.sync(redis)
    await arq.enqueue([NewJob(queue_job_id("abc", 17), b"m", 1000, 60_000, 17), new_job(1)], 100, now_ms=5)
    assert [(c.job_id, c.texts) for c in await arq.claim(10, 100, 10_000, now_ms=10)] == [("abc.17", 17), ("j1", 1)]


async def test_withdraw_takes_only_jobs_no_worker_holds(redis):
    arq = JobQueue.sync(redis)
    await arq.enqueue([new_job(1, 2), new_job(2, 3)], backlog_limit=100, now_ms=5)
    [claimed] = await arq.claim(1, 100, lease_ms=10_000, now_ms=10)
    assert claimed.job_id == "j1"
    assert await arq.withdraw(["j1", "j2", "j9"]) == 1
    assert await redis.zrange("emb:queue:sync", 0, -1) == [b"j1"]  # the running one stays until it finishes
    assert await redis.exists("arq:job:j2") == 0
    assert int(await redis.get("emb:queued-texts")) == 2 + 3 - 1  # "j2" counts 1: no count in its id


async def test_a_backlog_count_below_zero_is_put_back_to_zero_by_the_next_enqueue(redis):
    # releases of work an emptied Redis no longer counted
    await redis.set(keys.QUEUED_TEXTS, -7)
    arq = JobQueue.sync(redis)
    assert (await arq.enqueue([new_job(1, 3)], backlog_limit=10, now_ms=5)).admitted == [True]
    assert int(await redis.get(keys.QUEUED_TEXTS)) == 3
