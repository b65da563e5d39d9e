"""Tracing's cost: two stacks with the stub encoder (the plumbing alone, where a span's cost shows most), one with
tracing off (the default) and one exporting every request's spans (``OTEL_TRACES_EXPORTER=otlp_json_file``, OTLP
JSON lines into the processes' logs), measured in turn, ``rounds`` times, 1 short text a request.

    .venv/bin/python -m bench.run --only tracing

That tracing off costs nothing is measured by running ``--only pipeline`` at this release and at the one before
tracing, interleaved (README, "Tracing").
"""

from __future__ import annotations

from pathlib import Path
from statistics import median

from bench.load import LoadResult
from bench.run import SHORT, Workload, drive
from tests.stack import running_stack

TRACED = {"OTEL_TRACES_EXPORTER": "otlp_json_file"}


def tracing_section(seconds: float, logs: Path, rounds: int = 3) -> None:
    off: dict[int, list[LoadResult]] = {1: [], 64: []}
    on: dict[int, list[LoadResult]] = {1: [], 64: []}
    with (
        running_stack(logs / "untraced", ENCODER="stub") as untraced,
        running_stack(logs / "traced", ENCODER="stub", **TRACED) as traced,
    ):
        for _ in range(rounds):
            for connections in (1, 64):
                workload = Workload("", connections, SHORT[:1])
                off[connections].append(drive(untraced.base_url, workload, seconds, untraced.redis_url))
                on[connections].append(drive(traced.base_url, workload, seconds, traced.redis_url))
        spans = sum(log.read_text().count('"spanId"') for log in (logs / "traced").glob("*.log"))
    print("\n## Tracing: stub encoder, tracing off (the default) and on (every span exported), 1 short text a request")
    print(f"(medians of {rounds} rounds, each round measuring both in turn; {spans} spans exported)")
    header = f"{'off req/s':>10} {'p50 ms':>7} | {'on req/s':>9} {'p50 ms':>7} | {'on/off':>6} {'added p50':>9}"
    print(f"{'clients':<8} {header}")
    for connections in (1, 64):
        a, b = off[connections], on[connections]
        ratio = median(x.requests_per_s / y.requests_per_s for x, y in zip(b, a, strict=True))
        added = median(x.p50_ms - y.p50_ms for x, y in zip(b, a, strict=True))
        print(
            f"{connections:<8} {median(r.requests_per_s for r in a):10.0f} {median(r.p50_ms for r in a):7.2f} | "
            f"{median(r.requests_per_s for r in b):9.0f} {median(r.p50_ms for r in b):7.2f} | "
            f"{ratio:6.2f} {added:9.2f}"
        )
