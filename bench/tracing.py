"""Tracing's cost: stacks with tracing off (the default), on with every request's spans exported
(``OTEL_TRACES_EXPORTER=otlp_json_file``: OTLP JSON lines into the processes' logs), and on with one trace in ten
sampled (``parentbased_traceidratio``, 0.1), measured in turn, ``rounds`` times, 1 short text a request. The stub
encoder shows the plumbing alone, where a span's cost shows most; the real model what a CPU deployment sees.

    .venv/bin/python -m bench.run --only tracing

That tracing off costs nothing is measured by running ``--only pipeline`` at this release and at the one before
tracing, interleaved (README, "Tracing").
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from statistics import median

from bench.load import LoadResult
from bench.run import SHORT, Workload, drive
from tests.stack import Stack, running_stack

EXPORTED = {"OTEL_TRACES_EXPORTER": "otlp_json_file"}
SAMPLED = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
CONFIGS: dict[str, dict[str, str]] = {"off": {}, "on, all": EXPORTED, "on, 10% sampled": {**EXPORTED, **SAMPLED}}
#: (encoder, clients)
WORKLOADS = [("stub", 1), ("stub", 64), ("model", 64)]


def tracing_section(seconds: float, logs: Path, rounds: int = 2) -> None:
    results: dict[tuple[str, int, str], list[LoadResult]] = {}
    with contextlib.ExitStack() as stacks:
        running: dict[tuple[str, str], Stack] = {
            (encoder, config): stacks.enter_context(
                running_stack(logs / f"tracing-{encoder}-{i}", ENCODER=encoder, **env)
            )
            for encoder in ("stub", "model")
            for i, (config, env) in enumerate(CONFIGS.items())
        }
        for _ in range(rounds):
            for encoder, clients in WORKLOADS:
                for config in CONFIGS:
                    stack = running[encoder, config]
                    result = drive(stack.base_url, Workload("", clients, SHORT[:1]), seconds, stack.redis_url)
                    results.setdefault((encoder, clients, config), []).append(result)
    print("\n## Tracing: off (the default), on with every span exported, on with 10% sampled; 1 short text a request")
    print(f"(medians of {rounds} rounds, each round measuring the three in turn): requests/s, p50 ms, x off")
    print(f"{'encoder':<8} {'clients':>7} " + " ".join(f"{config:>24}" for config in CONFIGS))
    for encoder, clients in WORKLOADS:
        off = results[encoder, clients, "off"]
        cells = []
        for config in CONFIGS:
            runs = results[encoder, clients, config]
            ratio = median(r.requests_per_s / o.requests_per_s for r, o in zip(runs, off, strict=True))
            rate, p50 = median(r.requests_per_s for r in runs), median(r.p50_ms for r in runs)
            cells.append(f"{rate:.0f}, {p50:.2f} ms, {ratio:.2f}x")
        print(f"{encoder:<8} {clients:>7} " + " ".join(f"{cell:>24}" for cell in cells))
