"""A closed-loop HTTP load generator in plain asyncio, for where wrk cannot run (bench/gpu_check.py's fallback).

Each of ``processes`` processes keeps its share of ``connections`` keep-alive connections busy with the same POST
for ``seconds``; latencies are merged. Slower than wrk per request, so on a fast stack it may be the bound: the
GPU check says which generator measured.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time
import urllib.parse

from bench.load import LoadResult


async def _connection(host: str, port: int, request: bytes, stop_at: float, latencies: list[float]) -> int:
    errors = 0
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            if head[9:12] != b"200":
                errors += 1
            latencies.append(time.perf_counter() - started)
    finally:
        writer.close()
    return errors


async def _drive(host: str, port: int, request: bytes, connections: int, seconds: float) -> tuple[list[float], int]:
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds
    results = await asyncio.gather(
        *(_connection(host, port, request, stop_at, latencies) for _ in range(connections)), return_exceptions=True
    )
    errors = sum(r if isinstance(r, int) else 1 for r in results)
    return latencies, errors


def _process(args: tuple[str, int, bytes, int, float]) -> tuple[list[float], int]:
    return asyncio.run(_drive(*args))


def run_python_load(url: str, body: dict[str, object], *, connections: int, seconds: float) -> LoadResult:
    parsed = urllib.parse.urlsplit(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    payload = json.dumps(body).encode()
    request = (
        f"POST {parsed.path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    processes = max(1, min(connections, (multiprocessing.cpu_count() or 2) // 4, 4))
    shares = [connections // processes + (1 if i < connections % processes else 0) for i in range(processes)]
    if processes == 1:
        parts = [_process((host, port, request, connections, seconds))]
    else:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            parts = pool.map(_process, [(host, port, request, share, seconds) for share in shares])
    latencies = sorted(latency for part, _ in parts for latency in part)
    errors = sum(part_errors for _, part_errors in parts)

    def percentile(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else 0.0

    return LoadResult(
        requests=len(latencies), seconds=seconds, p50_ms=percentile(0.5), p99_ms=percentile(0.99), errors=errors
    )
