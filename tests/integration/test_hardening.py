"""Defects found by attacking the real stack, each with a test that failed before its fix: Redis down on the jobs
routes, a poisonous queue entry, a client hanging up mid-body, a Redis restart (lost work told apart from new work),
and model names that are local folders."""

from __future__ import annotations

import http.server
import socket
import time

import httpx
import msgpack
import redis

from shared import keys
from tests.integration.conftest import (
    MODEL,
    TEXTS,
    assert_same_vectors,
    in_background,
    post_all,
    vectors_of,
    wait_until,
)

JOB_ROUTES = [
    ("POST", "/v1/embeddings/jobs", {"model": MODEL, "input": ["a", "b"]}),
    ("GET", "/v1/embeddings/jobs/embjob_0123456789ab0123456789abcdef0123456789abcdef", None),
    ("GET", "/v1/embeddings/jobs/embjob_0123456789ab0123456789abcdef0123456789abcdef/result", None),
    ("POST", "/v1/embeddings/jobs/embjob_0123456789ab0123456789abcdef0123456789abcdef/cancel", None),
]


def test_jobs_routes_answer_503_with_retry_after_while_redis_is_down(stack_with):
    stack = stack_with()
    stack.stop_redis()
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        for method, path, body in JOB_ROUTES:
            response = client.request(method, path, json=body)
            assert response.status_code == 503, (path, response.text)
            assert response.headers["retry-after"] and response.json()["error"]["code"] == "service_unavailable"
        stack.start_redis()
        wait_until(lambda: client.get("/readyz").status_code == 200, 30, "readiness after the restart")
        # the same connection goes on serving
        assert client.post("/v1/embeddings/jobs", json={"model": MODEL, "input": ["a"]}).status_code == 202
    assert "Traceback" not in (stack.log_dir / "api.log").read_text()


def test_an_unreadable_queue_entry_is_moved_aside_and_the_worker_goes_on(stack_with, reference):
    stack = stack_with()
    [worker] = stack.workers
    client = redis.Redis.from_url(stack.redis_url)
    client.set("arq:job:evil.1", b"garbage")
    client.zadd(keys.SYNC_QUEUE, {"evil.1": 0})
    client.publish(keys.WAKE_CHANNEL, keys.SYNC_QUEUE)
    wait_until(lambda: client.llen(keys.DEAD_LETTER) == 1, 10, "the entry to be moved aside")
    entry = msgpack.unpackb(client.lindex(keys.DEAD_LETTER, 0))
    assert (entry["id"], entry["payload"]) == ("evil.1", b"garbage")
    # kept aside first, then taken off the queue: two writes, so a loaded machine may see one before the other
    wait_until(
        lambda: client.zcard(keys.SYNC_QUEUE) == 0 and not client.exists("arq:job:evil.1"), 10, "the entry to leave"
    )
    client.close()
    [response] = post_all(stack.base_url, [{"model": MODEL, "input": TEXTS[:2]}])
    assert response.status_code == 200
    assert_same_vectors(vectors_of(response.json()), reference(TEXTS[:2]))
    assert worker.poll() is None, "the worker died"
    assert "evil.1" in (stack.log_dir / "worker-0.log").read_text()


def test_a_client_hanging_up_mid_body_is_one_info_line_counted_499(stack_with):
    stack = stack_with()
    for path in ("/v1/embeddings/jobs", "/v1/embeddings"):
        with socket.create_connection(("127.0.0.1", stack.api_port)) as sock:
            head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            sock.sendall(head.encode() + b'{"model": "')
            time.sleep(0.3)
    time.sleep(0.5)
    metrics = httpx.get(stack.base_url + "/metrics").text
    for path in ("/v1/embeddings/jobs", "/v1/embeddings"):
        assert f'embeddings_api_requests_total{{route="{path}",status="499"}} 1.0' in metrics
    assert 'status="500"' not in metrics
    log = (stack.log_dir / "api.log").read_text()
    assert "Traceback" not in log and "ERROR" not in log
    assert log.count("the client left before it was answered") == 2


def test_after_an_empty_redis_restart_lost_requests_fail_at_once_and_new_ones_succeed(stack_with, reference):
    stack = stack_with(FAULT_ENCODE_DELAY_S="3", WORKER_MAX_JOBS="1", REQUEST_TIMEOUT_S="60")
    in_flight = in_background(post_all, stack.base_url, [{"model": MODEL, "input": f"lost {i}"} for i in range(3)])
    time.sleep(1)
    stack.stop_redis()
    stack.start_redis()  # empty: the queued jobs are gone
    started = time.monotonic()
    lost = in_flight.result(timeout=60)
    fresh = [{"model": MODEL, "input": [text]} for text in TEXTS[:4]]
    wait_until(lambda: httpx.get(stack.base_url + "/readyz").status_code == 200, 30, "a worker in the new Redis")
    new = post_all(stack.base_url, fresh)
    assert time.monotonic() - started < 30  # long before the 60 s deadline
    assert all(response.status_code in (200, 503) for response in lost)
    assert sum(response.status_code == 503 for response in lost) >= 2  # the ones queued behind the running one
    for body, response in zip(fresh, new, strict=True):
        assert response.status_code == 200, response.text  # written in the new Redis: never failed as lost
        assert_same_vectors(vectors_of(response.json()), reference(body["input"]))


def test_a_job_the_restart_lost_is_410_not_404(stack_with):
    stack = stack_with()
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        job = client.post("/v1/embeddings/jobs", json={"model": MODEL, "input": ["a"]}).json()
        stack.stop_redis()
        stack.start_redis()  # empty
        wait_until(lambda: client.get("/readyz").status_code == 200, 30, "readiness after the restart")
        lost = client.get(f"/v1/embeddings/jobs/{job['id']}")
        assert lost.status_code == 410 and lost.json()["error"]["code"] == "job_lost"
        made_now = "embjob_" + f"{int(time.time() * 1000):012x}" + "0" * 32
        assert client.get(f"/v1/embeddings/jobs/{made_now}").status_code == 404


def test_a_model_name_that_is_a_local_folder_is_refused_like_an_unknown_one(stack_with):
    stack = stack_with(ALLOW_ANY_MODEL="true")
    with httpx.Client(base_url=stack.base_url, timeout=60) as client:
        for name in ("tests", "worker", "no-such-model-anywhere"):  # folders in the worker's working directory
            response = client.post("/v1/embeddings", json={"model": name, "input": "x"})
            assert response.status_code == 404, response.text
            assert response.json()["error"]["message"] == f"model {name!r} was not found or cannot be loaded"
        assert {m["id"] for m in client.get("/v1/models").json()["data"]} == {MODEL}


def test_a_finished_job_survives_a_redis_kill_with_the_deployed_persistence(stack_with, reference):
    stack = stack_with()
    stack.stop_redis()
    stack.start_redis(persistent=True)
    texts = [f"kept across a crash {i}" for i in range(5)]
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, 30, "readiness on the persistent Redis")
        job = client.post("/v1/embeddings/jobs", json={"model": MODEL, "input": texts}).json()
        wait_until(lambda: client.get(f"/v1/embeddings/jobs/{job['id']}").json()["status"] == "completed", 60, "job")
        time.sleep(1.5)  # appendfsync everysec: what is older than a second is on disk
        assert stack.redis is not None
        stack.redis.kill()
        stack.redis.wait()
        stack.start_redis(persistent=True)
        wait_until(lambda: client.get("/readyz").status_code == 200, 30, "readiness after the crash")
        result = client.get(f"/v1/embeddings/jobs/{job['id']}/result")
        assert result.status_code == 200, result.text
        assert_same_vectors(vectors_of(result.json()), reference(texts))


class RateLimitingHub(http.server.BaseHTTPRequestHandler):
    """A hub that answers every request with 429 (retry at once), as an overloaded or rate-limiting hub does."""

    def reply(self) -> None:
        self.send_response(429)
        self.send_header("Retry-After", "0")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET = reply

    def log_message(self, format, *args) -> None:
        pass


def test_a_model_the_hub_cannot_serve_now_is_503_model_unavailable_not_404(stack_with, tmp_path):
    hub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RateLimitingHub)
    in_background(hub.serve_forever)
    try:
        stack = stack_with(
            HF_HUB_OFFLINE="0",
            HF_ENDPOINT=f"http://127.0.0.1:{hub.server_port}",
            HF_HOME=str(tmp_path / "empty-hf-home"),
            ALLOWED_MODELS="acme/not-cached-here",
        )
        with httpx.Client(base_url=stack.base_url, timeout=120) as client:
            # huggingface_hub retries each file five times, a second apart, before it gives up
            response = client.post("/v1/embeddings", json={"model": "acme/not-cached-here", "input": "x"})
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "model_unavailable"
            assert response.headers["retry-after"]
            assert client.post("/v1/embeddings", json={"model": MODEL, "input": "x"}).status_code == 200
    finally:
        hub.shutdown()
        hub.server_close()
