"""Jobs are counted once: every way a job can end, on either queue, moves the worker's Prometheus ``JOBS`` counter
by one under its outcome, and the heartbeat (what the API sums into ``embeddings_live_worker_jobs``) reports the
same counts. On a real redis-server, which can run out of memory."""

import asyncio

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis.exceptions import OutOfMemoryError

from shared import keys
from shared.clock import now_ms
from shared.protocol import encode_job
from shared.redis_client import connect
from shared.settings import Settings
from shared.workers import live_workers
from tests.fakes import Loader, make_embed_chunk, make_embed_task, make_registry
from worker import chunk_jobs, metrics
from worker.app import TaskWorker
from worker.service import TaskService


def scraped() -> dict[str, int]:
    """``embeddings_worker_jobs_total`` by outcome, as Prometheus scrapes it from the worker."""
    families = text_string_to_metric_families(generate_latest(REGISTRY).decode())
    return {
        sample.labels["outcome"]: int(sample.value)
        for family in families
        for sample in family.samples
        if sample.name == "embeddings_worker_jobs_total"
    }


async def parent(redis, parent_job: str, requests: int) -> None:
    """A batch's progress record, for its chunks to be counted into."""
    fields = {"total": requests, "chunks": 1, "completed": 0, "failed": 0, "prompt_tokens": 0, "chunks_done": 0}
    await redis.hset(keys.progress(parent_job), mapping=fields)


async def fill(redis) -> None:
    """Redis over its maxmemory: data first, then a cap below what it holds (noeviction keeps it all)."""
    for i in range(64):
        await redis.set(f"fill:{i}", b"x" * 65536)
    await redis.config_set("maxmemory", 1 << 20)
    with pytest.raises(OutOfMemoryError):
        await redis.set("probe", b"x")


async def heartbeat_counts(settings: Settings, service: TaskService) -> dict[str, int]:
    """The counts the worker's heartbeat records, read back as the API reads them."""
    redis = connect(settings)
    worker = TaskWorker(settings, service, connect(settings), handle_signals=False)
    beating = asyncio.create_task(worker._heartbeat())
    try:
        for _ in range(100):
            if workers := await live_workers(redis, 5):
                [info] = workers
                return info.counters
            await asyncio.sleep(0.01)
        raise AssertionError("no heartbeat was recorded")
    finally:
        beating.cancel()
        await asyncio.gather(beating, return_exceptions=True)
        await worker.pool.aclose()
        await redis.aclose()


async def test_each_way_a_job_ends_is_counted_once_and_the_heartbeat_reports_what_prometheus_does(
    redis_url, monkeypatch
):
    monkeypatch.setattr(chunk_jobs, "STORE_BACKOFF_S", 0.0)
    settings = Settings(_env_file=None, redis_url=redis_url, worker_heartbeat_s=0.1)
    redis = connect(settings)
    registry = make_registry(Loader(failing={"missing"}))
    service = TaskService(registry, redis, "w1", max_attempts=2, store_attempts=1)
    before = scraped()

    # the sync queue
    await service.handle("answered", encode_job(make_embed_task()))
    await service.handle("answered-with-an-error", encode_job(make_embed_task(model="missing")))
    await service.handle("expired", encode_job(make_embed_task(deadline_ms=now_ms() - 1)))
    await service.handle("abandoned", encode_job(make_embed_task()), attempt=3)
    await service.handle("unreadable", b"\xc1")
    # the chunk queue
    for name in ("stored", "failed", "abandoned", "given-back", "cancelled", "expired", "out-of-memory"):
        await parent(redis, f"batch_{name}", 1)
    chunk = make_embed_chunk(parent_job="batch_stored", parts=[2])
    await service.handle_chunk("stored", encode_job(chunk))
    await service.handle_chunk("failed", encode_job(make_embed_chunk(parent_job="batch_failed", model="missing")))
    await service.handle_chunk("abandoned", encode_job(make_embed_chunk(parent_job="batch_abandoned")), attempt=3)
    await service.handle_chunk("unreadable-chunk", b"\xc1")
    # not ended here: a failure that may pass gives the chunk back to the queue; nothing is run of a chunk whose
    # batch was cancelled, or whose deadline passed
    given_back = make_embed_chunk(parent_job="batch_given-back", model="crash")
    await service.handle_chunk("given-back", encode_job(given_back))
    await service.handle_chunk("cancelled", encode_job(make_embed_chunk(parent_job="batch_cancelled")), cancelled=True)
    expired = make_embed_chunk(parent_job="batch_expired", deadline_ms=now_ms() - 1)
    await service.handle_chunk("expired-chunk", encode_job(expired))
    # encoded, but Redis is full: its results cannot be stored, and it fails
    await fill(redis)
    await service.handle_chunk("out-of-memory", encode_job(make_embed_chunk(parent_job="batch_out-of-memory")))
    assert await redis.hget(keys.progress("batch_out-of-memory"), "failed") == b"2"
    await redis.config_set("maxmemory", 0)

    after = scraped()
    assert {outcome: after[outcome] - before.get(outcome, 0) for outcome in after} == {
        "answered": 2,
        "expired": 1,
        "abandoned": 2,
        "dead_letter": 2,
        "chunk": 1,
        "chunk_failed": 2,
    }
    assert list(after) == list(metrics.JOB_OUTCOMES)
    assert await heartbeat_counts(settings, service) == after == metrics.job_counts()
    await registry.close()
    await redis.aclose()
