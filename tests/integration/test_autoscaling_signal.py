"""The number KEDA scales workers on, read where the ScaledObject reads it: the queues' sorted sets in a real Redis
under real load (a worker made slow, so work waits), rising with the load and falling back to zero after it."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import redis

from tests.integration.conftest import MODEL
from tests.manifests import of_kind, render
from tests.stack import running_stack


def scaled_queues() -> list[str]:
    [scaled] = of_kind(render("gpu"), "ScaledObject")
    return [trigger["metadata"]["listName"] for trigger in scaled["spec"]["triggers"]]


def test_the_scaling_signal_moves_with_the_load_and_falls_back(tmp_path):
    sync_queue, chunk_queue = scaled_queues()
    with running_stack(tmp_path, FAULT_ENCODE_DELAY_S="0.2", JOB_CHUNK_SIZE="4", MAX_BATCH_SIZE="4") as stack:
        store = redis.Redis.from_url(stack.redis_url)
        assert store.zcard(sync_queue) == store.zcard(chunk_queue) == 0

        def one(i: int) -> int:
            with httpx.Client(base_url=stack.base_url, timeout=120) as client:
                return client.post("/v1/embeddings", json={"model": MODEL, "input": [f"text {i}"] * 4}).status_code

        with httpx.Client(base_url=stack.base_url, timeout=60) as client:
            job = client.post("/v1/embeddings/jobs", json={"model": MODEL, "input": [f"t {i}" for i in range(64)]})
            assert job.status_code == 202, job.text
            with concurrent.futures.ThreadPoolExecutor(24) as pool:
                answers = [pool.submit(one, i) for i in range(24)]
                seen = {sync_queue: 0, chunk_queue: 0}
                while not all(answer.done() for answer in answers):
                    for queue in seen:
                        seen[queue] = max(seen[queue], store.zcard(queue))
                    time.sleep(0.05)
            assert [answer.result() for answer in answers] == [200] * 24
            assert seen[sync_queue] >= 8, seen  # requests waited for the one slow worker
            assert seen[chunk_queue] >= 2, seen  # so did the job's 16 chunks
            deadline = time.monotonic() + 120
            while client.get(f"/v1/embeddings/jobs/{job.json()['id']}").json()["status"] != "completed":
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert store.zcard(sync_queue) == store.zcard(chunk_queue) == 0  # no work left: the signal is back at zero
        store.close()
