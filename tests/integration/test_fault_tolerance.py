"""Crashes, Redis restarts, deadlines, disconnects, overload, poison and shutdowns, over real processes.

Each test runs its own stack, with faults injected through the worker's FAULT_* settings.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import httpx
import msgpack
import pytest
import redis

from shared import keys
from shared.clock import now_ms
from shared.job_queue import TASK_FUNCTION, serialize_arq_job
from shared.protocol import EmbedTask, encode_job
from tests.integration.conftest import (
    MODEL,
    TEXTS,
    assert_same_vectors,
    in_background,
    post_all,
    vectors_of,
    wait_until,
)

POISON_TOKEN = 30000
CRASH_TOKEN = 30001


def worker_counters(redis_url: str) -> dict[str, int]:
    client = redis.Redis.from_url(redis_url)
    try:
        totals: dict[str, int] = {}
        for key in client.scan_iter(keys.worker_info("*")):
            for name, value in msgpack.unpackb(client.get(key), raw=False)["counters"].items():
                totals[name] = totals.get(name, 0) + value
        return totals
    finally:
        client.close()


def queue_length(redis_url: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.zcard(keys.SYNC_QUEUE))
    finally:
        client.close()


def assert_right_vectors(responses, inputs, reference) -> None:
    for texts, response in zip(inputs, responses, strict=True):
        assert response.status_code == 200, response.text
        assert_same_vectors(vectors_of(response.json()), reference(texts))


def test_requests_of_a_worker_killed_mid_batch_are_rerun(stack_with, reference):
    stack = stack_with(FAULT_ENCODE_DELAY_S="1.5", JOB_LEASE_S="2")
    inputs = [TEXTS[i : i + 2] for i in range(4)]
    pending = in_background(post_all, stack.base_url, [{"model": MODEL, "input": t} for t in inputs])
    time.sleep(0.8)  # the batch is inside the model now
    killed_at = time.monotonic()
    stack.workers[0].send_signal(signal.SIGKILL)
    stack.workers[0].wait()
    stack.start_worker()
    responses = pending.result(timeout=120)
    print(f"\nrecovered {len(responses)} requests {time.monotonic() - killed_at:.1f}s after the kill")
    assert_right_vectors(responses, inputs, reference)


def test_a_job_that_keeps_killing_workers_is_abandoned(stack_with, reference):
    stack = stack_with(FAULT_CRASH_TOKEN=str(CRASH_TOKEN), JOB_LEASE_S="1", MAX_JOB_ATTEMPTS="2")
    pending = in_background(post_all, stack.base_url, [{"model": MODEL, "input": [[101, CRASH_TOKEN]]}])
    restarts = 0
    while not pending.done() and restarts < 5:  # a supervisor, as compose's restart policy would be
        if stack.workers[-1].poll() is not None:
            stack.start_worker()
            restarts += 1
        time.sleep(0.1)
    [response] = pending.result(timeout=120)
    assert response.status_code == 500
    assert "2 times" in response.json()["error"]["message"]
    assert restarts == 2
    stack.wait_ready()
    assert_right_vectors(post_all(stack.base_url, [{"model": MODEL, "input": TEXTS[:2]}]), [TEXTS[:2]], reference)


def test_redis_down_is_a_fast_503_and_everything_recovers_when_it_returns(stack_with, reference):
    stack = stack_with()
    processes = [stack.api, *stack.workers]
    stack.stop_redis()
    started = time.monotonic()
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        response = client.post("/v1/embeddings", json={"model": MODEL, "input": "x"})
        assert response.status_code == 503 and response.headers["retry-after"]
        assert response.json()["error"]["code"] == "service_unavailable"
        assert time.monotonic() - started < 10
        assert client.get("/readyz").status_code == 503
        stack.start_redis()  # empty, as Redis without persistence comes back
        wait_until(lambda: client.get("/readyz").status_code == 200, 30, "readiness after the restart")
        response = client.post("/v1/embeddings", json={"model": MODEL, "input": TEXTS[:3]})
    assert_right_vectors([response], [TEXTS[:3]], reference)
    assert all(process.poll() is None for process in processes), "nothing was restarted"


def test_past_the_deadline_the_client_gets_504_and_queued_work_is_withdrawn(stack_with):
    stack = stack_with(REQUEST_TIMEOUT_S="1", FAULT_ENCODE_DELAY_S="1.5", WORKER_MAX_JOBS="1")
    responses = post_all(stack.base_url, [{"model": MODEL, "input": text} for text in TEXTS[:3]])
    assert [r.status_code for r in responses] == [504, 504, 504]
    assert all(r.json()["error"]["code"] == "timeout" for r in responses)
    assert queue_length(stack.redis_url) <= 1  # only the one a worker had already started
    wait_until(lambda: queue_length(stack.redis_url) == 0, 10, "the started job to finish")
    assert worker_counters(stack.redis_url).get("answered", 0) <= 1


def test_a_worker_skips_jobs_whose_deadline_has_passed(stack_with):
    stack = stack_with()
    job = EmbedTask(
        request_id="late",
        model=MODEL,
        input_kind="text",
        inputs=["nobody waits for this"],
        dimensions=None,
        truncate=True,
        prompt_name=None,
        input_type=None,
        normalize=None,
        enqueued_ms=now_ms() - 5000,
        deadline_ms=now_ms() - 1000,
        reply_to=keys.reply_list("gone"),
        encoding_format="float",
    )
    client = redis.Redis.from_url(stack.redis_url)
    arq_job = {"t": 1, "f": TASK_FUNCTION, "a": [encode_job(job)], "k": {}, "et": now_ms()}
    client.psetex("arq:job:late", 60_000, serialize_arq_job(arq_job))
    client.zadd(keys.SYNC_QUEUE, {"late": now_ms()})
    client.publish(keys.WAKE_CHANNEL, b"")
    wait_until(lambda: worker_counters(stack.redis_url).get("expired", 0) == 1, 10, "the worker to skip the job")
    assert client.llen(keys.reply_list("gone")) == 0
    client.close()


def test_a_client_that_disconnects_has_its_queued_work_dropped(stack_with):
    stack = stack_with(FAULT_ENCODE_DELAY_S="1", WORKER_MAX_JOBS="1", WORKER_HEARTBEAT_S="0.2")
    kept = in_background(post_all, stack.base_url, [{"model": MODEL, "input": "kept"}])
    time.sleep(0.3)
    with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=stack.base_url, timeout=0.5) as client:
        client.post("/v1/embeddings", json={"model": MODEL, "input": "abandoned"})
    wait_until(lambda: queue_length(stack.redis_url) <= 1, 5, "the abandoned job to leave the queue")
    [response] = kept.result(timeout=30)
    assert response.status_code == 200
    wait_until(lambda: worker_counters(stack.redis_url).get("answered") == 1, 10, "the kept job's count")
    time.sleep(2.5)  # time enough for the abandoned one to be encoded (1 s) had it stayed, and counted (0.2 s)
    assert worker_counters(stack.redis_url)["answered"] == 1


def test_over_the_backlog_bound_new_requests_get_429_and_accepted_ones_succeed(stack_with, reference):
    stack = stack_with(MAX_QUEUED_TEXTS="8", FAULT_ENCODE_DELAY_S="0.5", MAX_BATCH_SIZE="4")
    inputs = [[f"{TEXTS[i % len(TEXTS)]} ({i})"] for i in range(24)]
    responses = post_all(stack.base_url, [{"model": MODEL, "input": t} for t in inputs])
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 429}, statuses
    assert statuses.count(200) >= 8
    for texts, response in zip(inputs, responses, strict=True):
        if response.status_code == 429:
            assert response.headers["retry-after"] == "1"
            assert response.json()["error"]["code"] == "rate_limit_exceeded"
        else:
            assert_right_vectors([response], [texts], reference)


def test_poisonous_input_fails_only_its_request_and_oversized_batches_are_split(stack_with, reference):
    stack = stack_with(FAULT_POISON_TOKEN=str(POISON_TOKEN), FAULT_OOM_ABOVE="4", FAULT_ENCODE_DELAY_S="0.3")
    good = [TEXTS[i : i + 2] for i in range(5)]
    bodies = [{"model": MODEL, "input": "warm the model up"}, {"model": MODEL, "input": [[2023, POISON_TOKEN]]}]
    bodies += [{"model": MODEL, "input": texts} for texts in good]
    responses = post_all(stack.base_url, bodies)
    assert responses[0].status_code == 200
    assert responses[1].status_code == 500
    assert responses[1].json()["error"]["code"] == "internal_error"
    assert_right_vectors(responses[2:], good, reference)
    assert max(int(r.headers["x-batch-requests"]) for r in responses[2:]) > 1
    big = [f"{text} #{i}" for i, text in enumerate(TEXTS * 2)]
    assert_right_vectors(post_all(stack.base_url, [{"model": MODEL, "input": big}]), [big], reference)


def test_sigterm_lets_a_worker_finish_its_batches_and_a_rolling_restart_loses_nothing(stack_with, reference):
    # a long lease: a job the stopping worker dropped would come back only after it, far slower than any answer
    stack = stack_with(FAULT_ENCODE_DELAY_S="0.3", JOB_LEASE_S="30")
    inputs = [[f"{TEXTS[i % len(TEXTS)]} #{i}"] for i in range(30)]
    results: list[httpx.Response] = []
    seconds: list[float] = []

    def steady_load():
        with httpx.Client(base_url=stack.base_url, timeout=60) as client:
            for texts in inputs:
                started = time.monotonic()
                results.append(client.post("/v1/embeddings", json={"model": MODEL, "input": texts}))
                seconds.append(time.monotonic() - started)
                time.sleep(0.05)

    load = threading.Thread(target=steady_load)
    load.start()
    time.sleep(1)
    old = stack.workers[0]
    stack.start_worker()
    wait_until(lambda: len(worker_counters(stack.redis_url)) > 0 and _live_workers(stack) == 2, 60, "worker 2")
    old.send_signal(signal.SIGTERM)
    assert old.wait(30) == 0
    load.join(120)
    assert_right_vectors(results, inputs, reference)
    assert max(seconds) < 15, "a job the stopping worker held waited for its lease: it was dropped, not finished"
    stopped_log = (stack.log_dir / "worker-0.log").read_text()
    answered_by_old = int(re.search(r"stopped: answered (\d+)", stopped_log).group(1))

    def answered() -> int:  # the new worker's count, as its heartbeat reports it, and the old one's last word
        return worker_counters(stack.redis_url).get("answered", 0) + answered_by_old

    wait_until(lambda: answered() >= len(inputs), 10, "the new worker's heartbeat")
    time.sleep(1)
    assert answered() == len(inputs), "some job ran twice"


def test_shutdown_grace_bounds_how_long_a_stopping_worker_waits(stack_with):
    stack = stack_with(FAULT_ENCODE_DELAY_S="20", SHUTDOWN_GRACE_S="0.5", WORKER_HEARTBEAT_S="0.2")
    [worker] = stack.workers
    pending = in_background(post_all, stack.base_url, [{"model": MODEL, "input": "slow"}], 30)
    wait_until(lambda: queue_length(stack.redis_url) == 1, 10, "the job to be queued")
    time.sleep(0.5)  # the job is in its 20 s batch
    worker.send_signal(signal.SIGTERM)
    started = time.monotonic()
    worker.wait(30)
    assert time.monotonic() - started < 6  # 0.5 s of grace, then the held job is cancelled (not 20 s)
    pending.cancel()


def _live_workers(stack) -> int:
    client = redis.Redis.from_url(stack.redis_url)
    try:
        return sum(1 for _ in client.scan_iter(keys.worker_info("*")))
    finally:
        client.close()


def test_sigterm_lets_the_api_finish_requests_in_flight(stack_with, reference):
    stack = stack_with(FAULT_ENCODE_DELAY_S="1")
    pending = in_background(post_all, stack.base_url, [{"model": MODEL, "input": TEXTS[:2]}])
    time.sleep(0.4)
    os.kill(stack.api.pid, signal.SIGTERM)
    [response] = pending.result(timeout=30)
    assert_right_vectors([response], [TEXTS[:2]], reference)
    assert stack.api.wait(10) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has drained
