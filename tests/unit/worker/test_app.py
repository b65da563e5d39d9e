"""The worker's claim loop run by arq's own lifecycle (``Worker.async_run``, its SIGTERM handling, ``close``), over a
real redis-server (arq asks it for INFO, which fakeredis lacks) with the fake model: guards the arq internals
``TaskWorker`` relies on (arq is pinned)."""

import asyncio
import contextlib
import signal

import pytest

from shared import keys
from shared.clock import now_ms
from shared.job_queue import ATTEMPT_STEPS, JobQueue, NewJob
from shared.protocol import decode_reply, encode_job
from shared.queue_format import queue_job_id
from shared.redis_client import connect
from shared.settings import Settings
from shared.workers import live_workers
from tests.fakes import REPLY_TO, Loader, make_embed_task, make_registry
from worker.app import TaskWorker
from worker.service import TaskService


def settings(redis_url: str) -> Settings:
    return Settings(
        _env_file=None,
        redis_url=redis_url,
        embed_models=["m"],
        worker_heartbeat_s=0.1,
        job_lease_s=2,
        shutdown_grace_s=5,
    )


async def enqueue(redis, request_id: str) -> None:
    job = make_embed_task(request_id=request_id)
    new_job = NewJob(queue_job_id(request_id, 2), (encode_job(job),), now_ms(), 60_000, 2)
    assert (await JobQueue.sync(redis).enqueue([new_job], 100, now_ms())).admitted == [True]


async def next_reply(redis):
    popped = await redis.blpop([REPLY_TO], timeout=5)
    assert popped is not None, "no reply came"
    return decode_reply(popped[1])


# arq 0.28's Worker.close calls redis-py's deprecated close()
@pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning")
async def test_the_worker_serves_jobs_and_finishes_held_ones_on_sigterm(redis_url):
    loader = Loader()
    redis = connect(settings(redis_url))
    service = TaskService(make_registry(loader), redis, "w1", max_attempts=2)
    worker = TaskWorker(settings(redis_url), service, connect(settings(redis_url)), handle_signals=False)
    running = asyncio.create_task(worker.async_run())

    await enqueue(redis, "first")
    reply = await next_reply(redis)
    assert reply.request_id == "first" and reply.error is None
    assert [w.worker_id for w in await live_workers(redis, 1)] == ["w1"]
    assert await redis.exists(keys.SYNC_QUEUE + ":health-check")  # arq's health check is recorded
    assert int(await redis.get(keys.QUEUED_TEXTS)) == 0

    service.registry._loaded.clear()  # the next job has to load its model again, and the load is held
    loader.release.clear()
    await enqueue(redis, "held")
    for _ in range(100):
        if worker.tasks:
            break
        await asyncio.sleep(0.01)
    assert list(worker.tasks) == [queue_job_id("held", 2)]
    claimed = await redis.zscore(keys.SYNC_QUEUE, queue_job_id("held", 2))
    await asyncio.sleep(0.8)  # a renewal (every job_lease_s / 3) moves its lease on and keeps its attempt count
    renewed = await redis.zscore(keys.SYNC_QUEUE, queue_job_id("held", 2))
    assert renewed > claimed > now_ms() and round((renewed % 1) * ATTEMPT_STEPS) == 1
    worker.handle_sig_wait_for_completion(signal.SIGTERM)
    await enqueue(redis, "after-sigterm")
    await asyncio.sleep(0.2)
    loader.release.set()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(running, 5)
    assert (await next_reply(redis)).request_id == "held"  # the held job was finished, not dropped
    await worker.close()
    assert await redis.zrange(keys.SYNC_QUEUE, 0, -1) == [queue_job_id("after-sigterm", 2).encode()]  # not taken
    assert await live_workers(redis, 1) == []
    await redis.aclose()
