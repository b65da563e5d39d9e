from arq.jobs import Job

from shared import keys
from shared.job_queue import (
    ATTEMPT_STEPS,
    MOST_ATTEMPTS,
    TASK_FUNCTION,
    FinishedJob,
    JobQueue,
    NewJob,
    deserialize_arq_job,
    queue_score,
)
from shared.queue_format import queue_job_id

KEY_A, KEY_B = "0123456789abcdef", "fedcba9876543210"


def new_job(i: int, texts: int = 1, owner: str | None = None) -> NewJob:
    job_id = queue_job_id(f"j{i}", texts, owner)
    return NewJob(job_id=job_id, messages=(f"m{i}".encode(),), enqueued_ms=1000 + i, expires_ms=60_000, texts=texts)


async def shares(redis) -> dict[str, int]:
    """What each owner holds of the sync queue's backlog."""
    return {owner.decode(): int(texts) for owner, texts in (await redis.hgetall(keys.QUEUED_TEXTS_PER_KEY)).items()}


async def queued_texts(redis) -> int:
    return int(await redis.get(keys.QUEUED_TEXTS) or 0)


async def test_enqueued_jobs_are_arq_jobs(redis):
    enqueued = await JobQueue.sync(redis).enqueue([new_job(1), new_job(2)], backlog_limit=100, now_ms=5)
    assert enqueued.admitted == [True, True]
    assert enqueued.epoch == (await redis.get("emb:epoch")).decode()  # the first write made this Redis's epoch
    info = await Job("j1.1", redis, _queue_name="emb:queue:sync", _deserializer=deserialize_arq_job).info()
    assert info is not None
    assert (info.function, list(info.args), info.enqueue_time.timestamp()) == (TASK_FUNCTION, [b"m1"], 1.001)
    assert await redis.zrange("emb:queue:sync", 0, -1) == [b"j1.1", b"j2.1"]
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
    assert (claimed.job_id, claimed.messages, claimed.texts) == ("evil.1", [b"garbage"], 1)


async def test_enqueue_refuses_past_the_backlog_bound(redis):
    arq = JobQueue.sync(redis)
    enqueued = await arq.enqueue([new_job(1, 6), new_job(2, 3), new_job(3, 2)], backlog_limit=10, now_ms=5)
    assert enqueued.admitted == [True, True, False]
    assert enqueued.owner_holds == [0, 0, 0]
    assert await redis.exists("arq:job:j3.2") == 0
    assert int(await redis.get("emb:queued-texts")) == 9


async def test_a_request_larger_than_the_bound_passes_when_nothing_is_queued(redis):
    assert (await JobQueue.sync(redis).enqueue([new_job(1, 50)], backlog_limit=10, now_ms=5)).admitted == [True]


async def test_claim_takes_due_jobs_once_and_counts_attempts(redis):
    arq = JobQueue.sync(redis)
    await arq.enqueue([new_job(i) for i in range(5)], backlog_limit=100, now_ms=5)
    first = await arq.claim(3, 100, lease_ms=10_000, now_ms=10)
    assert [(c.job_id, c.messages, c.attempt) for c in first] == [
        ("j0.1", [b"m0"], 1),
        ("j1.1", [b"m1"], 1),
        ("j2.1", [b"m2"], 1),
    ]
    second = await arq.claim(10, 100, lease_ms=10_000, now_ms=10)
    assert [c.job_id for c in second] == ["j3.1", "j4.1"]
    assert await arq.claim(10, 100, lease_ms=10_000, now_ms=10) == []
    assert await arq.claim(10, 100, lease_ms=10_000, now_ms=10_009) == []  # held until its lease ends...
    [again] = await arq.claim(1, 100, lease_ms=10_000, now_ms=10_011)  # ...then the worker holding it died
    assert (again.job_id, again.attempt) == ("j0.1", 2)
    assert await redis.zscore("emb:queue:sync", "j0.1") == 20_011 + 2 / ATTEMPT_STEPS
    later = await arq.claim(10, 100, lease_ms=10_000, now_ms=20_012)  # every lease has lapsed
    assert {c.job_id: c.attempt for c in later} == {"j0.1": 3, "j1.1": 2, "j2.1": 2, "j3.1": 2, "j4.1": 2}
    assert await redis.keys("arq:in-progress:*") == await redis.keys("arq:retry:*") == []  # the score says it all


def test_a_score_holds_a_time_and_attempts_exactly_for_centuries():
    for ms in (0, 1_796_000_000_000, 2**43 - 1):
        for attempts in (0, 1, 3, MOST_ATTEMPTS):
            score = queue_score(ms, attempts)
            assert (int(score), round((score - int(score)) * ATTEMPT_STEPS)) == (ms, attempts)
            assert float(repr(score)) == score


async def test_claimed_jobs_wait_out_of_reach_until_their_lease_ends(redis):
    arq = JobQueue.sync(redis)
    await arq.enqueue([new_job(1), new_job(2)], backlog_limit=100, now_ms=5)
    await arq.claim(1, 100, lease_ms=1000, now_ms=10)
    assert await redis.zrangebyscore("emb:queue:sync", "-inf", 10) == [b"j2.1"]  # the next claim scans j2 alone
    assert await redis.zscore("emb:queue:sync", "j1.1") == 1010 + 1 / ATTEMPT_STEPS  # its lease's end; 1 attempt
    async with redis.pipeline(transaction=False) as pipe:
        arq.renew_in(pipe, {"j1.1": 1}, lease_ms=1000, now_ms=500)
        await pipe.execute()
    assert await redis.zscore("emb:queue:sync", "j1.1") == 1500 + 1 / ATTEMPT_STEPS


async def test_an_unclaimed_job_can_be_claimed_again_at_once(redis):
    arq = JobQueue.chunks(redis)
    await arq.enqueue([new_job(1)], backlog_limit=100, now_ms=5)
    [claimed] = await arq.claim(1, 100, lease_ms=10_000, now_ms=10)
    await arq.unclaim(claimed.job_id, now_ms=20)
    [again] = await arq.claim(1, 100, lease_ms=10_000, now_ms=20)
    assert (again.job_id, again.attempt) == ("j1.1", 2)


async def test_claim_skips_jobs_not_yet_due_and_drops_expired_ones_releasing_their_texts(redis):
    arq = JobQueue.sync(redis)
    await arq.enqueue([new_job(1, 3, KEY_A), new_job(2, 2, KEY_B)], backlog_limit=100, now_ms=50)
    assert await arq.claim(10, 100, lease_ms=1000, now_ms=10) == []
    await redis.delete(f"arq:job:{KEY_A}:j1.3")  # its definition expired: nobody will ever run it
    assert [c.job_id for c in await arq.claim(10, 100, lease_ms=1000, now_ms=100)] == [f"{KEY_B}:j2.2"]
    assert await redis.zcard("emb:queue:sync") == 1
    assert (await queued_texts(redis), await shares(redis)) == (2, {KEY_B: 2})


async def test_finish_delivers_replies_and_cleans_up(redis):
    arq = JobQueue.sync(redis)
    await arq.enqueue([new_job(1, 2, KEY_A), new_job(2, 3, KEY_A), new_job(3, 4, KEY_B)], 100, now_ms=5)
    await arq.claim(10, 100, lease_ms=10_000, now_ms=10)
    assert (await queued_texts(redis), await shares(redis)) == (9, {KEY_A: 5, KEY_B: 4})
    first, second, third = f"{KEY_A}:j1.2", f"{KEY_A}:j2.3", f"{KEY_B}:j3.4"
    await arq.finish([FinishedJob(first, "emb:reply:a", b"r1"), FinishedJob(second)])
    assert await redis.lrange("emb:reply:a", 0, -1) == [b"r1"]
    assert await redis.zrange("emb:queue:sync", 0, -1) == [third.encode()]
    assert await redis.exists(f"arq:job:{first}") == 0
    assert await redis.exists(f"arq:job:{second}") == 0
    assert (await queued_texts(redis), await shares(redis)) == (4, {KEY_B: 4})  # an owner at 0 leaves the hash
    await arq.finish([FinishedJob(third)])
    assert (await queued_texts(redis), await shares(redis)) == (0, {})


async def test_a_job_finished_twice_is_released_once(redis):
    """Its worker seemed dead, so another ran it too: the second finish finds it off the queue already."""
    arq = JobQueue.sync(redis)
    await arq.enqueue([new_job(1, 2, KEY_A), new_job(2, 3, KEY_A)], backlog_limit=100, now_ms=5)
    await arq.finish([FinishedJob(f"{KEY_A}:j1.2")])
    await arq.finish([FinishedJob(f"{KEY_A}:j1.2")])
    assert (await queued_texts(redis), await shares(redis)) == (3, {KEY_A: 3})


async def test_work_an_emptied_redis_lost_is_not_released_from_the_new_count(redis):
    arq = JobQueue.sync(redis)
    await arq.enqueue([new_job(1, 4, KEY_A)], backlog_limit=100, now_ms=5)
    await redis.flushall()  # a restart without persistence, while a worker holds the job
    await arq.enqueue([new_job(2, 3, KEY_A)], backlog_limit=100, now_ms=6)
    await arq.finish([FinishedJob(f"{KEY_A}:j1.4", "emb:reply:a", b"late")])
    assert (await queued_texts(redis), await shares(redis)) == (3, {KEY_A: 3})


async def test_an_undecodable_job_still_releases_what_its_id_names(redis):
    """The worker cannot read its texts from the message; the id says how many were counted."""
    arq = JobQueue.sync(redis)
    await arq.enqueue([new_job(1, 5, KEY_A)], backlog_limit=100, now_ms=5)
    await arq.finish([FinishedJob(f"{KEY_A}:j1.5")])
    assert (await queued_texts(redis), await shares(redis)) == (0, {})


async def test_claim_keeps_to_a_text_budget_but_takes_at_least_one_job(redis):
    arq = JobQueue.sync(redis)
    jobs = [NewJob(queue_job_id(f"r{i}", 4), (b"m",), 1000 + i, 60_000, 4) for i in range(4)]
    await arq.enqueue(jobs, backlog_limit=100, now_ms=5)
    assert [c.texts for c in await arq.claim(10, 9, lease_ms=10_000, now_ms=10)] == [4, 4]
    assert len(await arq.claim(10, 1, lease_ms=10_000, now_ms=10)) == 1


async def test_claims_read_the_text_count_from_the_job_id(redis):
    arq = JobQueue.sync(redis)
    await arq.enqueue([NewJob(queue_job_id("abc", 17), (b"m",), 1000, 60_000, 17), new_job(1)], 100, now_ms=5)
    assert [(c.job_id, c.texts) for c in await arq.claim(10, 100, 10_000, now_ms=10)] == [("abc.17", 17), ("j1.1", 1)]


async def test_withdraw_takes_only_jobs_no_worker_holds(redis):
    arq = JobQueue.sync(redis)
    await arq.enqueue([new_job(1, 2, KEY_A), new_job(2, 3, KEY_A), new_job(3, 4, KEY_B)], 100, now_ms=5)
    [claimed] = await arq.claim(1, 100, lease_ms=10_000, now_ms=10)
    assert claimed.job_id == f"{KEY_A}:j1.2"
    assert await arq.withdraw([f"{KEY_A}:j1.2", f"{KEY_A}:j2.3", f"{KEY_B}:j3.4", "j9.1"], now_ms=20) == 2
    assert await redis.zrange("emb:queue:sync", 0, -1) == [claimed.job_id.encode()]  # running: stays to its end
    assert await redis.exists(f"arq:job:{KEY_A}:j2.3", f"arq:job:{KEY_B}:j3.4") == 0
    assert (await queued_texts(redis), await shares(redis)) == (2, {KEY_A: 2})
    await arq.finish([FinishedJob(claimed.job_id)])
    assert (await queued_texts(redis), await shares(redis)) == (0, {})


async def test_withdraw_takes_a_job_whose_lease_ended(redis):
    arq = JobQueue.sync(redis)
    await arq.enqueue([new_job(1, 2)], 100, now_ms=5)
    await arq.claim(1, 100, lease_ms=1000, now_ms=10)
    assert await arq.withdraw(["j1.2"], now_ms=1009) == 0
    assert await arq.withdraw(["j1.2"], now_ms=1011) == 1  # its worker died with it
    assert (await redis.zcard("emb:queue:sync"), await queued_texts(redis)) == (0, 0)


async def test_an_id_with_no_count_counts_one_text_when_released(redis):
    arq = JobQueue.sync(redis)
    await arq.enqueue([NewJob("j1", (b"m",), 1000, 60_000, 2), new_job(2, 3)], backlog_limit=100, now_ms=5)
    assert await arq.withdraw(["j1"]) == 1
    assert await queued_texts(redis) == 2 + 3 - 1


async def test_a_backlog_count_below_zero_is_put_back_to_zero_by_the_next_enqueue(redis):
    # releases of work an emptied Redis no longer counted
    await redis.set(keys.QUEUED_TEXTS, -7)
    arq = JobQueue.sync(redis)
    assert (await arq.enqueue([new_job(1, 3)], backlog_limit=10, now_ms=5)).admitted == [True]
    assert int(await redis.get(keys.QUEUED_TEXTS)) == 3


async def test_a_key_past_its_share_is_refused_while_another_key_is_admitted(redis):
    arq = JobQueue.sync(redis)
    jobs = [new_job(1, 3, KEY_A), new_job(2, 3, KEY_A), new_job(3, 3, KEY_B), new_job(4, 1, KEY_A)]
    enqueued = await arq.enqueue(jobs, backlog_limit=100, now_ms=5, per_key_limit=4)
    assert enqueued.admitted == [True, False, True, True]  # one script call, jobs of many requests and keys
    assert enqueued.owner_holds == [0, 3, 0, 0]
    assert (await queued_texts(redis), await shares(redis)) == (7, {KEY_A: 4, KEY_B: 3})
    later = await arq.enqueue([new_job(5, 1, KEY_A), new_job(6, 1, KEY_B)], 100, now_ms=6, per_key_limit=4)
    assert (later.admitted, later.owner_holds) == ([False, True], [4, 0])
    await arq.finish([FinishedJob(f"{KEY_A}:j1.3")])  # a worker gives KEY_A room again
    again = await arq.enqueue([new_job(7, 3, KEY_A)], 100, now_ms=7, per_key_limit=4)
    assert again.admitted == [True]
    assert (await queued_texts(redis), await shares(redis)) == (8, {KEY_A: 4, KEY_B: 4})


async def test_a_request_larger_than_the_share_passes_when_its_key_has_nothing_queued(redis):
    arq = JobQueue.sync(redis)
    assert (await arq.enqueue([new_job(1, 5, KEY_B)], 100, now_ms=5, per_key_limit=4)).admitted == [True]
    enqueued = await arq.enqueue([new_job(2, 50, KEY_A), new_job(3, 1, KEY_A)], 100, now_ms=6, per_key_limit=4)
    assert (enqueued.admitted, enqueued.owner_holds) == ([True, False], [0, 50])


async def test_the_whole_backlog_bound_is_checked_first(redis):
    arq = JobQueue.sync(redis)
    enqueued = await arq.enqueue([new_job(1, 4, KEY_A), new_job(2, 4, KEY_A)], 6, now_ms=5, per_key_limit=4)
    assert (enqueued.admitted, enqueued.owner_holds) == ([True, False], [0, 0])  # rate_limit_exceeded, not the key's


async def test_with_no_share_owners_are_counted_but_not_bounded(redis):
    arq = JobQueue.sync(redis)
    enqueued = await arq.enqueue([new_job(1, 30, KEY_A), new_job(2, 30, KEY_A)], backlog_limit=100, now_ms=5)
    assert enqueued.admitted == [True, True]
    assert await shares(redis) == {KEY_A: 60}  # so that their releases, which always count them, stay even


async def test_jobs_with_no_owner_count_only_in_the_whole_backlog(redis):
    arq = JobQueue.chunks(redis)
    enqueued = await arq.enqueue([new_job(1, 3), new_job(2, 3)], backlog_limit=100, now_ms=5, per_key_limit=1)
    assert enqueued.admitted == [True, True]
    assert int(await redis.get(keys.QUEUED_CHUNK_TEXTS)) == 6
    assert await redis.exists(keys.QUEUED_CHUNK_TEXTS_PER_KEY, keys.QUEUED_TEXTS, keys.QUEUED_TEXTS_PER_KEY) == 0


async def test_an_id_enqueued_twice_is_counted_once(redis):
    arq = JobQueue.sync(redis)
    await arq.enqueue([new_job(1, 3, KEY_A)], backlog_limit=100, now_ms=5)
    assert (await arq.enqueue([new_job(1, 3, KEY_A)], backlog_limit=100, now_ms=6)).admitted == [True]
    assert (await queued_texts(redis), await shares(redis)) == (3, {KEY_A: 3})
    await arq.finish([FinishedJob(f"{KEY_A}:j1.3")])
    assert (await queued_texts(redis), await shares(redis)) == (0, {})


async def test_shares_left_when_nothing_is_counted_are_dropped_by_the_next_enqueue(redis):
    """Every key's count is part of the whole: with the whole at 0 (or below), no key holds anything."""
    await redis.hset(keys.QUEUED_TEXTS_PER_KEY, mapping={KEY_A: 9, KEY_B: 2})  # drifted (say, a Redis restored)
    await redis.set(keys.QUEUED_TEXTS, -3)
    arq = JobQueue.sync(redis)
    enqueued = await arq.enqueue([new_job(1, 2, KEY_A)], backlog_limit=100, now_ms=5, per_key_limit=4)
    assert enqueued.admitted == [True]
    assert (await queued_texts(redis), await shares(redis)) == (2, {KEY_A: 2})


async def test_a_share_below_zero_reads_as_zero(redis):
    await arq_enqueue_one(redis, 1, KEY_B)
    await redis.hset(keys.QUEUED_TEXTS_PER_KEY, KEY_A, -5)
    enqueued = await JobQueue.sync(redis).enqueue([new_job(2, 4, KEY_A)], 100, now_ms=6, per_key_limit=4)
    assert enqueued.admitted == [True]
    assert await shares(redis) == {KEY_A: 4, KEY_B: 1}


async def arq_enqueue_one(redis, i: int, owner: str) -> None:
    assert (await JobQueue.sync(redis).enqueue([new_job(i, 1, owner)], 100, now_ms=5)).admitted == [True]
