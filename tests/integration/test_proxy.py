"""The nginx proxy the compose file and the Kubernetes manifests ship (deploy/kubernetes/base/api-proxy.conf.template),
run here with Debian's nginx in front of the real stack, with short timeouts: oversized headers get 431, oversized
bodies 413, clients slow to send their headers or body and idle connections are cut off before they reach the API,
and ordinary traffic passes."""

from __future__ import annotations

import shutil
import socket
import string
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import MODEL, TEXTS, assert_same_vectors, vectors_of
from tests.stack import ROOT, free_port, running_stack, spawn, stop, wait_for_port

TIMEOUT_S = 1


def render(directory: Path, api_port: int, port: int) -> Path:
    template = string.Template((ROOT / "deploy" / "kubernetes" / "base" / "api-proxy.conf.template").read_text())
    server = template.safe_substitute(  # nginx's own $variables stay, as the nginx image's envsubst leaves them
        PROXY_UPSTREAM=f"127.0.0.1:{api_port}",
        PROXY_LISTEN=f"127.0.0.1:{port}",
        PROXY_HEADER_TIMEOUT=f"{TIMEOUT_S}s",
        PROXY_BODY_TIMEOUT=f"{TIMEOUT_S}s",
        PROXY_IDLE_TIMEOUT=f"{TIMEOUT_S}s",
        PROXY_MAX_BODY="64k",
        PROXY_MAX_FILE_BODY="1m",
    )
    (directory / "api-proxy.conf").write_text(server)
    temp = "".join(
        f"{kind}_temp_path {directory}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main = directory / "nginx.conf"
    main.write_text(
        f"user root;\nworker_processes 1;\npid {directory}/nginx.pid;\nerror_log {directory}/error.log info;\n"
        f"daemon off;\nevents {{ worker_connections 256; }}\n"
        f"http {{\naccess_log {directory}/access.log;\n{temp}include {directory}/api-proxy.conf;\n}}\n"
    )
    return main


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        raise RuntimeError("nginx is not installed (scripts/install-system-deps.sh installs it)")
    directory = tmp_path_factory.mktemp("proxy")
    with running_stack(directory / "stack") as stack:
        port = free_port()
        process = spawn(
            [nginx, "-c", str(render(directory, stack.api_port, port)), "-p", str(directory)], directory / "nginx.log"
        )
        try:
            wait_for_port(port, 10)
            yield f"http://127.0.0.1:{port}", port, stack
        finally:
            stop(process)


def test_ordinary_requests_and_streamed_results_pass_through(proxy, reference):
    url, _, _ = proxy
    with httpx.Client(base_url=url, timeout=60) as client:
        response = client.post("/v1/embeddings", json={"model": MODEL, "input": TEXTS[:3]})
        assert response.status_code == 200 and len(response.headers["x-request-id"]) == 32
        assert_same_vectors(vectors_of(response.json()), reference(TEXTS[:3]))
        job = client.post("/v1/embeddings/jobs", json={"model": MODEL, "input": TEXTS}).json()
        for _ in range(600):
            if client.get(f"/v1/embeddings/jobs/{job['id']}").json()["status"] == "completed":
                break
            time.sleep(0.1)
        result = client.get(f"/v1/embeddings/jobs/{job['id']}/result")
        assert_same_vectors(vectors_of(result.json()), reference(TEXTS))


def test_an_oversized_header_is_431(proxy):
    url, _, _ = proxy
    response = httpx.post(url + "/v1/embeddings", json={"model": MODEL, "input": "x"}, headers={"X-Big": "a" * 20_000})
    assert response.status_code == 431
    assert response.json()["error"]["code"] == "request_header_fields_too_large"


def test_an_oversized_body_is_413(proxy):
    url, _, _ = proxy
    response = httpx.post(url + "/v1/embeddings", json={"model": MODEL, "input": "x" * 70_000})
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"


def test_batch_files_have_a_larger_limit_of_their_own(proxy):
    url, _, _ = proxy
    line = b'{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m", "input": "x"}}\n'
    with httpx.Client(base_url=url, timeout=60) as client:
        larger_than_a_body = line * (200_000 // len(line))
        uploaded = client.post("/v1/files", data={"purpose": "batch"}, files={"file": ("a.jsonl", larger_than_a_body)})
        assert uploaded.status_code == 200 and uploaded.json()["bytes"] == len(larger_than_a_body)
        assert client.get(f"/v1/files/{uploaded.json()['id']}/content").content == larger_than_a_body
        too_large = client.post("/v1/files", data={"purpose": "batch"}, files={"file": ("a.jsonl", line * 20_000)})
        assert too_large.status_code == 413 and too_large.json()["error"]["code"] == "payload_too_large"


def _cut_off_after(port: int, sent: bytes) -> float:
    """Seconds until the proxy closes a connection on which ``sent`` was sent and nothing more."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(sent)
        started = time.monotonic()
        while True:
            data = sock.recv(4096)
            if not data or data.startswith(b"HTTP/1.1 408"):
                return time.monotonic() - started
            assert not data.startswith(b"HTTP/1.1 2"), data


def test_a_client_slow_to_send_its_headers_is_cut_off(proxy):
    _, port, _ = proxy
    assert _cut_off_after(port, b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n") < TIMEOUT_S + 3


def test_a_body_shorter_than_its_length_is_cut_off_before_the_api(proxy):
    _, port, stack = proxy
    head = (
        b"POST /v1/embeddings/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    assert _cut_off_after(port, head + b'{"model": ') < TIMEOUT_S + 3
    metrics = httpx.get(stack.base_url + "/metrics").text
    assert 'route="/v1/embeddings/jobs",status="499"' not in metrics  # the API never saw it


def test_an_idle_connection_is_closed(proxy):
    _, port, _ = proxy
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        response = b""
        while not response.endswith(b'{"status":"ok"}'):
            response += sock.recv(4096)
        assert response.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert sock.recv(4096) == b""
        assert time.monotonic() - started < TIMEOUT_S + 3
