"""Prometheus metrics of the API and a worker move when requests are served."""

import urllib.request

import httpx

from tests.integration.conftest import MODEL, TEXTS, wait_until
from tests.stack import free_port, running_stack


def sample(text: str, name: str) -> float:
    """Sum of every sample of ``name`` (all label sets) in a Prometheus text exposition."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_worker_and_api_metrics_move(tmp_path):
    port = free_port()
    with running_stack(tmp_path, WORKER_METRICS_PORT=str(port)) as stack:
        worker_url = f"http://127.0.0.1:{port}/metrics"
        before = urllib.request.urlopen(worker_url, timeout=5).read().decode()
        with httpx.Client(base_url=stack.base_url, timeout=60) as client:
            for texts in (TEXTS[:3], TEXTS[3:5]):
                assert client.post("/v1/embeddings", json={"model": MODEL, "input": texts}).status_code == 200
            assert client.post("/v1/embeddings", json={"model": MODEL, "input": ""}).status_code == 400
            api_metrics = client.get("/metrics").text

            def fleet_answered() -> float:  # the workers' heartbeat counts, summed by the API
                return sample(client.get("/metrics").text, 'embeddings_live_worker_jobs{outcome="answered"}')

            wait_until(lambda: fleet_answered() == 2, 10, "the worker's heartbeat to count both requests")
        after = urllib.request.urlopen(worker_url, timeout=5).read().decode()
    for name in (
        "embeddings_batch_size_count",
        "embeddings_inference_seconds_count",
        "embeddings_queue_wait_seconds_count",
    ):
        assert sample(after, name) >= sample(before, name) + 2, name
    assert sample(after, "embeddings_worker_jobs_total") >= 2
    assert sample(after, "embeddings_model_loads_total") >= 1
    assert 'embeddings_api_requests_total{route="/v1/embeddings",status="200"} 2.0' in api_metrics
    assert 'embeddings_api_requests_total{route="/v1/embeddings",status="400"} 1.0' in api_metrics
    assert sample(api_metrics, "embeddings_live_workers") == 1
