"""A Redis that fills up or evicts never loses a vector silently, on real redis-server processes with a small
``maxmemory``: an evicting policy keeps the stack from serving and says why; on ``noeviction`` a stream of jobs
and batches bigger than Redis gets 507 for what does not fit while every accepted one completes with exact vectors and
synchronous requests keep getting 200s; results that vanish answer 410 naming what is missing; a Redis that runs out
of memory anyway (a budget that lies) makes workers back off, then fail the chunks by name, never count them."""

from __future__ import annotations

import base64
import random
import re
import threading
import time

import httpx
import numpy as np
import orjson
import pytest
import redis

from shared import keys
from tests.integration.conftest import MODEL, TEXTS, assert_same_vectors, wait_until
from tests.stack import running_stack

POOL = [f"{TEXTS[i % len(TEXTS)]} Variant {i}." for i in range(64)]
JOB_TEXTS = 2000
MB = 1024 * 1024


def job_inputs(seed: int, count: int = JOB_TEXTS) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(POOL) for _ in range(count)]


@pytest.fixture(scope="module")
def pool_vectors(reference) -> dict[str, np.ndarray]:
    return dict(zip(POOL, reference(POOL), strict=True))


def redis_args(maxmemory_mb: int, policy: str) -> list[str]:
    return ["--maxmemory", f"{maxmemory_mb}mb", "--maxmemory-policy", policy]


def vectors_of(body: dict) -> tuple[list[int], np.ndarray]:
    data = body["data"]
    rows = [np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in data]
    return [item["index"] for item in data], np.array(rows, dtype=np.float64)


#: more than a job and what finishing chunks give back meanwhile: a batch that cannot fit once a job did not
BATCH_REQUESTS = 3000


def batch_file(seed: int) -> tuple[bytes, list[str]]:
    texts = job_inputs(seed, BATCH_REQUESTS)
    lines = [
        orjson.dumps(
            {"custom_id": f"r{i}", "method": "POST", "url": "/v1/embeddings", "body": {"model": MODEL, "input": t}}
        )
        for i, t in enumerate(texts)
    ]
    return b"\n".join(lines) + b"\n", texts


def create_batch(client: httpx.Client, seed: int) -> tuple[httpx.Response, list[str]]:
    data, texts = batch_file(seed)
    uploaded = client.post("/v1/files", files={"file": ("batch.jsonl", data)}, data={"purpose": "batch"})
    if uploaded.status_code != 200:
        return uploaded, texts
    body = {"input_file_id": uploaded.json()["id"], "endpoint": "/v1/embeddings", "completion_window": "24h"}
    return client.post("/v1/batches", json=body), texts


def check_batch(client: httpx.Client, batch_id: str, texts: list[str], pool_vectors) -> None:
    deadline = time.monotonic() + 300
    while (batch := client.get(f"/v1/batches/{batch_id}").json())["status"] not in ("completed", "failed"):
        assert time.monotonic() < deadline, batch
        time.sleep(0.25)
    assert batch["status"] == "completed" and batch["request_counts"]["completed"] == len(texts), batch
    content = client.get(f"/v1/files/{batch['output_file_id']}/content")
    assert content.status_code == 200
    lines = [orjson.loads(line) for line in content.content.splitlines()]
    assert [line["custom_id"] for line in lines] == [f"r{i}" for i in range(len(texts))]
    vectors = np.array([line["response"]["body"]["data"][0]["embedding"] for line in lines], dtype=np.float64)
    assert_same_vectors(vectors, np.array([pool_vectors[text] for text in texts]))


def finish(client: httpx.Client, job_id: str, timeout_s: float = 300) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/embeddings/jobs/{job_id}").json()
        if job["status"] not in ("queued", "in_progress"):
            return job
        time.sleep(0.25)
    raise AssertionError(f"job {job_id} never ended: {job}")


class SyncLoad:
    """Synchronous requests one after another in a thread until stopped, every status kept."""

    def __init__(self, base_url: str) -> None:
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(base_url,), daemon=True)

    def __enter__(self) -> SyncLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self, base_url: str) -> None:
        with httpx.Client(base_url=base_url, timeout=90) as client:
            for i in range(100_000):
                if self._stop.is_set():
                    return
                response = client.post("/v1/embeddings", json={"model": MODEL, "input": POOL[i % len(POOL)]})
                self.statuses.append(response.status_code)


@pytest.mark.parametrize("policy", ["volatile-lru", "allkeys-lru"])
def test_an_evicting_redis_keeps_the_stack_from_serving_and_says_why(tmp_path, policy):
    with running_stack(tmp_path / "stack", redis_args=redis_args(64, policy), ready=False) as stack:
        with httpx.Client(base_url=stack.base_url, timeout=30) as client:
            ready = client.get("/readyz")
            assert ready.status_code == 503
            error = ready.json()["error"]
            assert error["code"] == "store_evicts_keys"
            assert f"maxmemory-policy {policy}" in error["message"] and "noeviction" in error["message"]
            sync = client.post("/v1/embeddings", json={"model": MODEL, "input": "hello"})
            assert (sync.status_code, sync.json()["error"]["code"]) == (503, "store_evicts_keys")
            job = client.post("/v1/embeddings/jobs", json={"model": MODEL, "input": ["a", "b"]})
            assert (job.status_code, job.json()["error"]["code"]) == (503, "store_evicts_keys")
        worker_log = stack.log_dir / "worker-0.log"
        wait_until(lambda: "refusing work until then" in worker_log.read_text(), 60, "the worker to refuse work")


def test_an_operator_may_accept_an_evicting_redis(tmp_path):
    env = {"ALLOW_EVICTING_REDIS": "true"}
    with running_stack(tmp_path / "stack", redis_args=redis_args(64, "volatile-lru"), **env) as stack:
        response = httpx.post(stack.base_url + "/v1/embeddings", json={"model": MODEL, "input": "hello"}, timeout=60)
        assert response.status_code == 200


def test_a_full_store_refuses_what_does_not_fit_and_completes_everything_it_accepted(tmp_path, pool_vectors):
    maxmemory_mb = 32
    with (
        running_stack(tmp_path / "stack", redis_args=redis_args(maxmemory_mb, "noeviction")) as stack,
        httpx.Client(base_url=stack.base_url, timeout=60) as client,
    ):
        accepted: dict[str, list[str]] = {}
        refused = []
        with SyncLoad(stack.base_url) as load:
            for seed in range(14):
                inputs = job_inputs(seed)
                body = {"model": MODEL, "input": inputs, "encoding_format": "base64"}
                response = client.post("/v1/embeddings/jobs", json=body)
                if response.status_code == 202:
                    accepted[response.json()["id"]] = inputs
                else:
                    assert response.status_code == 507, response.text
                    refused.append(response.json()["error"])
            # a batch, once the jobs have filled the budget, is refused the same way
            batch, _ = create_batch(client, 50)
            assert batch.status_code == 507, batch.text
            refused.append(batch.json()["error"])
            jobs = {job_id: finish(client, job_id) for job_id in accepted}
        assert accepted and refused, f"{len(accepted)} accepted, {len(refused)} refused: the test sizes are off"
        assert {error["code"] for error in refused} == {"insufficient_storage"}
        assert "the result store is full" in refused[0]["message"]
        assert load.statuses and set(load.statuses) == {200}, f"sync answers: {sorted(set(load.statuses))}"
        print(f"\n{len(accepted)} jobs accepted, {len(refused)} refused (507); {len(load.statuses)} sync requests: 200")

        for job_id, inputs in accepted.items():
            job = jobs[job_id]
            assert job["status"] == "completed", job
            assert job["request_counts"] == {"total": JOB_TEXTS, "completed": JOB_TEXTS, "failed": 0}
            result = client.get(f"/v1/embeddings/jobs/{job_id}/result")
            assert result.status_code == 200
            indices, vectors = vectors_of(result.json())
            assert indices == list(range(JOB_TEXTS))
            assert_same_vectors(vectors, np.array([pool_vectors[text] for text in inputs]))

        store = redis.Redis.from_url(stack.redis_url)
        try:
            memory = store.info("memory")
            assert memory["used_memory"] < maxmemory_mb * MB  # the budget kept Redis from filling up
            metrics = client.get("/metrics").text
            budget = float(re.search(r"^embeddings_store_budget_bytes (\S+)$", metrics, re.M).group(1))
            reserved = float(re.search(r"^embeddings_store_reserved_bytes (\S+)$", metrics, re.M).group(1))
            assert budget == int(maxmemory_mb * MB * 0.75) and 0 < reserved <= budget

            # a chunk that vanishes (as an eviction would make it) is named, never skipped
            lost_job = next(iter(accepted))
            store.delete(keys.chunk_vectors(lost_job, 1))
            job = client.get(f"/v1/embeddings/jobs/{lost_job}").json()
            assert job["status"] == "failed" and job["error"]["code"] == "job_lost"
            assert "inputs 256-511" in job["error"]["message"]
            lost = client.get(f"/v1/embeddings/jobs/{lost_job}/result")
            assert (lost.status_code, lost.json()["error"]["code"]) == (410, "job_lost")
            assert "256-511" in lost.json()["error"]["message"]
        finally:
            store.close()

        # deleting results gives their room back: a job refused before now fits
        for job_id in accepted:
            assert client.delete(f"/v1/embeddings/jobs/{job_id}").json()["deleted"] is True
        again = client.post("/v1/embeddings/jobs", json={"model": MODEL, "input": job_inputs(99)})
        assert again.status_code == 202, again.text
        batch, texts = create_batch(client, 51)
        assert batch.status_code == 200, batch.text
        assert finish(client, again.json()["id"])["status"] == "completed"
        check_batch(client, batch.json()["id"], texts, pool_vectors)
        assert "out of memory" not in (stack.log_dir / "worker-0.log").read_text()


def test_a_redis_out_of_memory_fails_chunks_by_name_and_never_counts_them(tmp_path, pool_vectors):
    """The budget is told Redis is larger than it is, so Redis itself refuses writes: nothing is counted that was
    not stored, every job ends, and workers back off instead of spinning."""
    env = {"STORE_BUDGET_BYTES": str(1 << 30), "STORE_WRITE_ATTEMPTS": "2"}
    with (
        running_stack(tmp_path / "stack", redis_args=redis_args(12, "noeviction"), **env) as stack,
        httpx.Client(base_url=stack.base_url, timeout=60) as client,
    ):
        accepted: dict[str, list[str]] = {}
        sync_statuses = []
        for seed in range(6):
            inputs = job_inputs(seed)
            response = client.post("/v1/embeddings/jobs", json={"model": MODEL, "input": inputs})
            if response.status_code == 202:
                accepted[response.json()["id"]] = inputs
            else:  # Redis itself is full by now
                assert (response.status_code, response.json()["error"]["code"]) == (507, "insufficient_storage")
        jobs = {}
        for job_id in accepted:
            jobs[job_id] = finish(client, job_id)
            sync = client.post("/v1/embeddings", json={"model": MODEL, "input": "hello"})
            sync_statuses.append(sync.status_code)
        assert set(sync_statuses) <= {200, 507}  # answered at once: never a 504, never "unreachable"

        failures = 0
        for job_id, inputs in accepted.items():
            job = jobs[job_id]
            counts = job["request_counts"]
            assert counts["completed"] + counts["failed"] == JOB_TEXTS
            for error in job["errors"]:
                assert "the result store was full" in error["message"]
            failures += counts["failed"]
            result = client.get(f"/v1/embeddings/jobs/{job_id}/result")
            if counts["completed"] == 0:
                continue
            assert result.status_code == 200, result.text
            indices, vectors = vectors_of_floats(result.json())
            assert len(indices) == counts["completed"]  # every row it counts, no fewer
            assert_same_vectors(vectors, np.array([pool_vectors[inputs[i]] for i in indices]))
        assert failures > 0, "Redis never ran out of memory: the test sizes are off"
        print(f"\n{len(accepted)} jobs accepted; {failures} of {len(accepted) * JOB_TEXTS} inputs failed by name")
        log = (stack.log_dir / "worker-0.log").read_text()
        assert "Traceback" not in log
        assert log.count("Redis is out of memory") <= 2 * sum(-(-JOB_TEXTS // 256) for _ in accepted)


def vectors_of_floats(body: dict) -> tuple[list[int], np.ndarray]:
    data = body["data"]
    return [item["index"] for item in data], np.array([item["embedding"] for item in data], dtype=np.float64)
