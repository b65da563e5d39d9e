"""A sticky device error (injected: what torch raises after an illegal memory access on CUDA) ends the worker that
meets it, over real processes: it removes its ready file and exits with its own status, its request is answered by
the other worker once the lease lapses, and the stack goes on serving."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.integration.conftest import MODEL, TEXTS, assert_same_vectors, in_background, post_all, vectors_of
from tests.stack import running_stack, start_worker
from worker.models.device_faults import STICKY_DEVICE_FAULT_EXIT

STICKY_TOKEN = 30002
#: MiniLM ids of "hello world", and the same with the token that breaks the device
PLAIN = [7592, 2088]
FAULTY = [7592, STICKY_TOKEN, 2088]


def wait_for_file(path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.1)


def test_a_sticky_device_error_ends_the_worker_and_another_answers_its_request(tmp_path, reference):
    with running_stack(tmp_path / "stack", workers=0, ready=False, TOKEN_IDS="model", JOB_LEASE_S="1") as stack:
        ready = {name: tmp_path / f"{name}.ready" for name in ("faulty", "healthy")}

        def worker(name: str, **env: str):
            log = stack.log_dir / f"worker-{name}.log"
            process = start_worker(stack.redis_url, log, **stack.env, READY_FILE=str(ready[name]), **env)
            stack.workers.append(process)
            return process

        faulty = worker("faulty", FAULT_STICKY_TOKEN=str(STICKY_TOKEN))
        wait_for_file(ready["faulty"], 120)
        healthy = worker("healthy")  # still loading its model: the faulty worker claims the request
        pending = in_background(post_all, stack.base_url, [{"model": MODEL, "input": [FAULTY]}])
        assert faulty.wait(60) == STICKY_DEVICE_FAULT_EXIT
        assert not ready["faulty"].exists()
        assert b"sticky device error" in (stack.log_dir / "worker-faulty.log").read_bytes()

        [answered] = pending.result(timeout=120)
        assert answered.status_code == 200, answered.text
        wait_for_file(ready["healthy"], 60)
        assert healthy.poll() is None
        with httpx.Client(base_url=stack.base_url, timeout=60) as client:
            again = client.post("/v1/embeddings", json={"model": MODEL, "input": [FAULTY]})
            plain = client.post("/v1/embeddings", json={"model": MODEL, "input": [PLAIN]})
        assert_same_vectors(vectors_of(answered.json()), vectors_of(again.json()))
        assert plain.status_code == 200, plain.text
        for response, text in zip(
            post_all(stack.base_url, [{"model": MODEL, "input": text} for text in TEXTS]), TEXTS, strict=True
        ):
            assert response.status_code == 200, response.text
            assert_same_vectors(vectors_of(response.json()), reference([text]))
