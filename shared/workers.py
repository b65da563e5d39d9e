"""Worker presence: workers announce themselves with heartbeats; the API reads who is alive and what they serve."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
from redis.asyncio import Redis

from shared import keys
from shared.clock import now_ms


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerInfo:
    worker_id: str
    device: str
    #: models loaded right now
    models: list[str]
    started_ms: int
    counters: dict[str, int] = dataclasses.field(default_factory=dict)
    #: what ``GET /v1/models`` says of each loaded model (dimensions, max tokens, prompts, normalized)
    model_cards: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


async def record_heartbeat(redis: Redis, info: WorkerInfo, ttl_s: float) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zadd(keys.WORKERS, {info.worker_id: now_ms()})
        pipe.set(keys.worker_info(info.worker_id), msgpack.packb(dataclasses.asdict(info)), px=int(ttl_s * 1000))
        # forget workers gone for a long time, so the set does not grow with every restart
        pipe.zremrangebyscore(keys.WORKERS, "-inf", now_ms() - int(100 * ttl_s * 1000))
        await pipe.execute()


async def remove_worker(redis: Redis, worker_id: str) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zrem(keys.WORKERS, worker_id)
        pipe.delete(keys.worker_info(worker_id))
        await pipe.execute()


async def live_workers(redis: Redis, ttl_s: float) -> list[WorkerInfo]:
    ids = await redis.zrangebyscore(keys.WORKERS, now_ms() - int(ttl_s * 1000), "+inf")
    if not ids:
        return []
    blobs = await redis.mget([keys.worker_info(i.decode()) for i in ids])
    workers = []
    for blob in blobs:
        if blob is None:
            continue
        fields = msgpack.unpackb(blob, raw=False)
        try:
            workers.append(WorkerInfo(**fields))
        except TypeError:
            continue  # a worker of another version; it is not ours to describe
    return workers
