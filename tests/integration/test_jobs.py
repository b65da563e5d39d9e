"""Asynchronous jobs over the real stack with two workers: chunks spread out, results match the sync API."""

from __future__ import annotations

import base64
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
import redis

from shared import keys
from tests.integration.conftest import MODEL, TEXTS, assert_same_vectors
from tests.stack import running_stack

CHUNK = 64


def corpus(count: int) -> list[str]:
    return [f"{TEXTS[i % len(TEXTS)]} (item {i})" for i in range(count)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("jobs"), workers=2, JOB_CHUNK_SIZE=str(CHUNK)) as stack:
        yield stack


@pytest.fixture
def client(stack):
    with httpx.Client(base_url=stack.base_url, timeout=60) as client:
        yield client


def wait_for(client: httpx.Client, job_id: str, timeout_s: float = 180) -> list[dict]:
    """Poll until the job ends; every job object seen, in order."""
    seen = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/embeddings/jobs/{job_id}").json()
        seen.append(job)
        if job["status"] in ("completed", "failed", "cancelled", "expired"):
            return seen
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish: {seen[-1]}")


def result_vectors(client: httpx.Client, job_id: str, **params) -> tuple[list[int], np.ndarray, dict]:
    response = client.get(f"/v1/embeddings/jobs/{job_id}/result", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    indices = [d["index"] for d in body["data"]]
    vectors = [
        np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
        if isinstance(d["embedding"], str)
        else d["embedding"]
        for d in body["data"]
    ]
    return indices, np.array(vectors, dtype=np.float64), body


def test_a_large_job_completes_across_workers_with_the_sync_apis_vectors(client, stack):
    texts = corpus(2000)
    created = client.post("/v1/embeddings/jobs", json={"model": MODEL, "input": texts, "metadata": {"run": "a"}})
    assert created.status_code == 202, created.text
    job = created.json()
    assert job["object"] == "embedding.job" and job["id"].startswith("embjob_") and len(job["id"]) > 30
    assert job["status"] in ("queued", "in_progress") and job["metadata"] == {"run": "a"}
    assert job["request_counts"] == {"total": 2000, "completed": 0, "failed": 0} or job["status"] == "in_progress"

    seen = wait_for(client, job["id"])
    done = [s["request_counts"]["completed"] for s in seen]
    assert done == sorted(done), "progress went backwards"
    assert seen[-1]["status"] == "completed" and done[-1] == 2000
    assert seen[-1]["completed_at"] >= seen[-1]["created_at"] and seen[-1]["expires_at"] > seen[-1]["completed_at"]
    assert any(s["status"] == "in_progress" for s in seen)

    indices, vectors, body = result_vectors(client, job["id"])
    assert indices == list(range(2000)) and vectors.shape == (2000, 384)
    assert body["model"] == MODEL and body["usage"]["prompt_tokens"] > 2000
    sample = list(range(0, 2000, 97))
    sync = client.post("/v1/embeddings", json={"model": MODEL, "input": [texts[i] for i in sample]}).json()
    sync_vectors = np.array([d["embedding"] for d in sync["data"]])
    assert_same_vectors(vectors[sample], sync_vectors)

    paged_indices, paged, _ = result_vectors(client, job["id"], offset=130, limit=70)
    assert paged_indices == list(range(130, 200))
    assert np.allclose(paged, vectors[130:200], atol=1e-6)


def test_base64_and_dimensions_apply_to_job_results(client):
    texts = corpus(100)
    body = {"model": MODEL, "input": texts, "encoding_format": "base64", "dimensions": 32}
    job = client.post("/v1/embeddings/jobs", json=body).json()
    assert wait_for(client, job["id"])[-1]["status"] == "completed"
    response = client.get(f"/v1/embeddings/jobs/{job['id']}/result").json()
    sync = client.post("/v1/embeddings", json=body).json()
    assert [d["index"] for d in response["data"]] == list(range(100))

    def decoded(body: dict) -> np.ndarray:
        return np.array([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in body["data"]])

    assert decoded(response).shape == (100, 32)
    assert_same_vectors(decoded(response), decoded(sync))


def test_idempotency_key_returns_the_same_job(client):
    body = {"model": MODEL, "input": corpus(10)}
    first = client.post("/v1/embeddings/jobs", json=body, headers={"Idempotency-Key": "k-123"})
    second = client.post("/v1/embeddings/jobs", json=body, headers={"Idempotency-Key": "k-123"})
    other = client.post("/v1/embeddings/jobs", json=body, headers={"Idempotency-Key": "k-456"})
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"] != other.json()["id"]


def test_cancel_stops_the_remaining_work(client, stack):
    job = client.post("/v1/embeddings/jobs", json={"model": MODEL, "input": corpus(6000)}).json()
    time.sleep(1.0)
    cancelled = client.post(f"/v1/embeddings/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    queue = redis.Redis.from_url(stack.redis_url)
    deadline = time.monotonic() + 60
    while queue.zcard(keys.CHUNK_QUEUE) and time.monotonic() < deadline:  # chunks already running finish
        time.sleep(0.2)
    assert queue.zcard(keys.CHUNK_QUEUE) == 0
    settled = client.get(f"/v1/embeddings/jobs/{job['id']}").json()
    assert settled["status"] == "cancelled"
    assert settled["request_counts"]["completed"] < 6000
    time.sleep(1.0)
    assert client.get(f"/v1/embeddings/jobs/{job['id']}").json()["request_counts"] == settled["request_counts"]
    assert client.get(f"/v1/embeddings/jobs/{job['id']}/result").status_code == 409


def test_unknown_jobs_are_404_and_unfinished_results_409(client):
    for path in ("/v1/embeddings/jobs/embjob_nope", "/v1/embeddings/jobs/embjob_nope/result"):
        response = client.get(path)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert client.post("/v1/embeddings/jobs/embjob_nope/cancel").status_code == 404
    job = client.post("/v1/embeddings/jobs", json={"model": MODEL, "input": corpus(3000)}).json()
    early = client.get(f"/v1/embeddings/jobs/{job['id']}/result")
    assert early.status_code == 409 and early.json()["error"]["code"] == "job_not_completed"
    client.post(f"/v1/embeddings/jobs/{job['id']}/cancel")


def test_an_internal_error_is_an_openai_500_that_closes_its_connection_so_the_next_request_works(client, stack):
    job = client.post("/v1/embeddings/jobs", json={"model": MODEL, "input": corpus(3)}).json()
    assert wait_for(client, job["id"])[-1]["status"] == "completed"
    store = redis.Redis.from_url(stack.redis_url)
    store.hset(keys.job(job["id"]), "total", "three")  # a record this server never writes: a bug's stand-in
    for path in (f"/v1/embeddings/jobs/{job['id']}", f"/v1/embeddings/jobs/{job['id']}/result"):
        broken = client.get(path)
        assert broken.status_code == 500 and broken.headers["connection"] == "close"
        assert broken.json()["error"]["code"] == "internal_error" and len(broken.headers["x-request-id"]) == 32
        assert "three" not in broken.text and "ValueError" not in broken.text
        # the same client, the next request: without the header it would go out on the closed connection
        assert client.get("/healthz").status_code == 200
    store.delete(keys.job(job["id"]))
    store.close()


def test_bad_job_requests_are_400(client):
    for body in (
        {"model": MODEL, "input": []},
        {"model": MODEL, "input": "x", "metadata": {"k": 1}},
        {"input": "x"},
        {"model": MODEL, "input": "x", "metdata": {"k": "v"}},
    ):
        response = client.post("/v1/embeddings/jobs", json=body)
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_request"


def sync_latencies(client: httpx.Client, count: int) -> list[float]:
    """Seconds each of ``count`` one-text synchronous requests took, one after another."""
    latencies = []
    for i in range(count):
        started = time.perf_counter()
        assert client.post("/v1/embeddings", json={"model": MODEL, "input": TEXTS[i % 8]}).status_code == 200
        latencies.append(time.perf_counter() - started)
    return latencies


def test_a_sync_request_stays_fast_while_a_large_job_runs(client, stack):
    queue = redis.Redis.from_url(stack.redis_url)
    deadline = time.monotonic() + 60
    while queue.zcard(keys.CHUNK_QUEUE) and time.monotonic() < deadline:  # chunks left running by other tests
        time.sleep(0.2)
    quiet = sync_latencies(client, 5)
    job = client.post("/v1/embeddings/jobs", json={"model": MODEL, "input": corpus(4000)}).json()
    time.sleep(1.0)
    busy = sync_latencies(client, 10)
    running = client.get(f"/v1/embeddings/jobs/{job['id']}").json()
    print(
        f"\nsync latency p50: idle {np.median(quiet) * 1000:.0f} ms, during a 4000-text job "
        f"{np.median(busy) * 1000:.0f} ms (max {max(busy) * 1000:.0f} ms); job was {running['status']}"
    )
    assert running["status"] == "in_progress", "the job must still be running for this to mean anything"
    client.post(f"/v1/embeddings/jobs/{job['id']}/cancel")


def test_results_expire(tmp_path):
    with running_stack(tmp_path, JOB_RESULT_TTL_S="3") as stack, httpx.Client(base_url=stack.base_url) as client:
        job = client.post("/v1/embeddings/jobs", json={"model": MODEL, "input": corpus(5)}).json()
        assert wait_for(client, job["id"])[-1]["status"] == "completed"
        assert client.get(f"/v1/embeddings/jobs/{job['id']}/result").status_code == 200
        time.sleep(3.5)
        assert client.get(f"/v1/embeddings/jobs/{job['id']}").json()["status"] == "expired"
        gone = client.get(f"/v1/embeddings/jobs/{job['id']}/result")
        assert gone.status_code == 410 and gone.json()["error"]["code"] == "expired"


def test_command_line_client_writes_the_vectors(stack, tmp_path, client):
    texts = corpus(150)
    source = tmp_path / "texts.jsonl"
    source.write_text("\n".join(f'{{"text": "{t}"}}' for t in texts), encoding="utf-8")
    out = tmp_path / "vectors.npy"
    command = [sys.executable, "-m", "api.client", "submit", str(source), "--model", MODEL, "--out", str(out)]
    completed = subprocess.run(
        [*command, "--url", stack.base_url, "--poll", "0.2"], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    assert "150/150" in completed.stderr
    vectors = np.load(out)
    sync = client.post("/v1/embeddings", json={"model": MODEL, "input": texts[:5]}).json()
    assert vectors.shape == (150, 384)
    assert_same_vectors(vectors[:5], np.array([d["embedding"] for d in sync["data"]]))


def test_a_failing_chunk_is_retried_then_reported_and_the_cli_leaves_its_rows_nan(tmp_path):
    # token 20000 is "chunk" in MiniLM's vocabulary: any input holding the word makes the model fail
    texts = [f"text number {i}" for i in range(12)]
    texts[5] = "this chunk is poisonous"
    source = tmp_path / "texts.txt"
    source.write_text("\n".join(texts), encoding="utf-8")
    out = tmp_path / "vectors.npy"
    settings = {"FAULT_POISON_TOKEN": "20000", "JOB_CHUNK_SIZE": "4", "MAX_JOB_ATTEMPTS": "3"}
    with running_stack(tmp_path / "logs", **settings) as stack, httpx.Client(base_url=stack.base_url) as client:
        command = [sys.executable, "-m", "api.client", "submit", str(source), "--model", MODEL, "--out", str(out)]
        completed = subprocess.run(
            [*command, "--url", stack.base_url, "--poll", "0.2"], capture_output=True, text=True, timeout=120
        )
        assert completed.returncode == 0, completed.stderr
        assert "4 failed (NaN rows)" in completed.stderr
        [job] = _jobs_in(stack.redis_url)  # a fresh stack: the CLI's job is the only one
        status = client.get(f"/v1/embeddings/jobs/{job}").json()
        assert status["status"] == "completed"
        assert status["request_counts"] == {"total": 12, "completed": 8, "failed": 4}
        assert [(e["offset"], e["count"]) for e in status["errors"]] == [(4, 4)]
        result = client.get(f"/v1/embeddings/jobs/{job}/result").json()
        assert [d["index"] for d in result["data"]] == [0, 1, 2, 3, 8, 9, 10, 11]
        sync = client.post("/v1/embeddings", json={"model": MODEL, "input": texts[:4] + texts[8:]}).json()
        worker_log = (tmp_path / "logs" / "worker-0.log").read_text()
    vectors = np.load(out)
    assert np.isnan(vectors[4:8]).all() and not np.isnan(vectors[:4]).any() and not np.isnan(vectors[8:]).any()
    assert_same_vectors(np.concatenate([vectors[:4], vectors[8:]]), [d["embedding"] for d in sync["data"]])
    assert worker_log.count("goes back to the queue") == 2  # runs 1 and 2 were retried; run 3 gave up


def _jobs_in(redis_url: str) -> list[str]:
    client = redis.Redis.from_url(redis_url)
    try:
        return [key.decode().removeprefix("emb:job:") for key in client.scan_iter("emb:job:*")]
    finally:
        client.close()
