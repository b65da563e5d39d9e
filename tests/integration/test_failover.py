"""Redis Sentinel over real processes: a primary, a replica and three sentinels on loopback ports; the API and a
worker find the primary through the sentinels. Under a steady load of synchronous requests and one running job,
the primary is SIGKILLed: after the failover requests succeed again without restarting anything, only retryable
503s were lost, no vector is wrong, and the job completes (chunks that were in flight run again)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np

from tests.integration.conftest import MODEL, TEXTS, assert_same_vectors, vectors_of, wait_until
from tests.stack import (
    free_port,
    sentinel_primary_port,
    sentinels_ready,
    start_api,
    start_redis,
    start_sentinel,
    start_worker,
    stop,
    wait_ready,
)

MASTER = "mymaster"


def test_a_killed_primary_fails_over_and_nothing_is_wrong(tmp_path: Path, reference):
    primary_port, replica_port, api_port = free_port(), free_port(), free_port()
    sentinel_ports = [free_port() for _ in range(3)]
    base_url = f"http://127.0.0.1:{api_port}"
    processes = []
    try:
        primary = start_redis(primary_port, tmp_path)
        processes.append(primary)
        processes.append(start_redis(replica_port, tmp_path, replica_of=primary_port))
        processes += [start_sentinel(port, primary_port, tmp_path, MASTER) for port in sentinel_ports]
        wait_until(lambda: sentinels_ready(replica_port, sentinel_ports[0], MASTER), 30, "the replica and sentinels")
        env = {
            "REDIS_SENTINELS": ",".join(f"127.0.0.1:{port}" for port in sentinel_ports),
            "REDIS_SENTINEL_MASTER": MASTER,
            "JOB_LEASE_S": "3",
            "REQUEST_TIMEOUT_S": "30",
            "JOB_CHUNK_SIZE": "16",
            "WORKER_HEARTBEAT_S": "1",
        }
        redis_url = "redis://127.0.0.1:1/0"  # the sentinels name the primary; only the database counts here
        worker = start_worker(redis_url, tmp_path / "worker.log", **env)
        api = start_api(redis_url, api_port, tmp_path / "api.log", **env)
        processes += [worker, api]
        wait_ready(base_url, [api, worker])

        outcomes: list[tuple[float, float, str, httpx.Response]] = []
        stopping = threading.Event()

        def steady_load() -> None:
            with httpx.Client(base_url=base_url, timeout=60) as client:
                i = 0
                while not stopping.is_set():
                    text = f"{TEXTS[i % len(TEXTS)]} #{i}"
                    sent = time.monotonic()
                    response = client.post("/v1/embeddings", json={"model": MODEL, "input": [text]})
                    outcomes.append((sent, time.monotonic(), text, response))
                    i += 1
                    time.sleep(0.05)

        with httpx.Client(base_url=base_url, timeout=60) as client:
            job_texts = [f"{TEXTS[i % len(TEXTS)]} (job item {i})" for i in range(480)]
            job = client.post("/v1/embeddings/jobs", json={"model": MODEL, "input": job_texts}).json()
            load = threading.Thread(target=steady_load)
            load.start()
            time.sleep(3)
            primary.kill()  # SIGKILL: no goodbye to anyone
            killed = time.monotonic()
            wait_until(lambda: sentinel_primary_port(sentinel_ports[0], MASTER) == replica_port, 30, "the failover")
            failed_over = time.monotonic()
            time.sleep(8)
            stopping.set()
            load.join(60)

            deadline = time.monotonic() + 120
            while True:
                polled = client.get(f"/v1/embeddings/jobs/{job['id']}")
                if polled.status_code == 200 and polled.json()["status"] in ("completed", "failed"):
                    break
                assert time.monotonic() < deadline, polled.text
                time.sleep(0.5)
            assert polled.json()["request_counts"] == {"total": 480, "completed": 480, "failed": 0}
            result = client.get(f"/v1/embeddings/jobs/{job['id']}/result").json()

        sample = list(range(0, 480, 37))
        assert_same_vectors(vectors_of(result)[sample], reference([job_texts[i] for i in sample]))
        succeeded = [(text, response) for _, _, text, response in outcomes if response.status_code == 200]
        failed = [response for _, _, _, response in outcomes if response.status_code != 200]
        assert all(response.status_code == 503 and response.headers["retry-after"] for response in failed), [
            (response.status_code, response.text) for response in failed
        ]
        vectors = np.concatenate([vectors_of(response.json()) for _, response in succeeded])
        assert_same_vectors(vectors, reference([text for text, _ in succeeded]))
        late = [response.status_code for sent, _, _, response in outcomes if sent > failed_over + 3]
        assert late and set(late) == {200}, "requests after the failover must succeed"
        unavailable = [(sent, done) for sent, done, _, response in outcomes if response.status_code == 503]
        span = max(done for _, done in unavailable) - min(sent for sent, _ in unavailable) if unavailable else 0.0
        slowest = max(done - sent for sent, done, _, _ in outcomes)
        report = (
            f"failover: sentinels promoted the replica {failed_over - killed:.1f}s after the kill; "
            f"{len(outcomes)} requests, {len(succeeded)} succeeded, {len(unavailable)} got 503 over {span:.1f}s, "
            f"the slowest took {slowest:.1f}s, 0 wrong; the job completed 480/480"
        )
        (tmp_path / "failover.txt").write_text(report)
        print(report)
    finally:
        for process in reversed(processes):
            stop(process)
