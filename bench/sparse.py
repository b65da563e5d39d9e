"""Sparse models: the stack's ``/embed_sparse`` against the in-process ceiling, ``SparseEncoder.encode`` at its best
batch size (torch float32, what the worker runs too), on the test SPLADE (MiniLM's BERT with a seeded MLM head,
``tests.model_fixtures``), at 16 clients x 32 short texts a request and 64 clients x 1.

    .venv/bin/python -m bench.run --only sparse

The ceiling is measured before and after the stack ran (the machine drifts); the ratios use the mean of the two.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from bench.load import LoadResult, run_wrk
from bench.run import SHORT, wait_idle
from tests.model_fixtures import SPLADE, build_sparse, model_paths_setting
from tests.stack import running_stack

BATCH_SIZES = (8, 16, 32, 64)
#: (clients, texts a request)
LOADS = ((16, 32), (64, 1))


def ceiling(folder: Path) -> tuple[float, int]:
    """Texts/s of ``SparseEncoder.encode`` at its best batch size, and that size."""
    from sentence_transformers import SparseEncoder

    model = SparseEncoder(str(folder), device="cpu")
    texts = SHORT * 4
    return _best(lambda size: model.encode(texts, batch_size=size, convert_to_sparse_tensor=False), len(texts))


def _best(run: Callable[[int], object], texts: int, rounds: int = 3) -> tuple[float, int]:
    run(32)  # warm-up
    best = (0.0, 0)
    for batch_size in BATCH_SIZES:
        for _ in range(rounds):
            started = time.perf_counter()
            run(batch_size)
            best = max(best, (texts / (time.perf_counter() - started), batch_size))
    return best


def sparse_section(logs: Path, seconds: float) -> None:
    folder = build_sparse(logs / "sparse-models")[SPLADE]
    before = ceiling(folder)
    rows: dict[tuple[int, int], LoadResult] = {}
    with running_stack(
        logs / "sparse", MODEL_PATHS=model_paths_setting({SPLADE: folder}), EMBED_MODELS=SPLADE
    ) as stack:
        for clients, count in LOADS:
            body = {"model": SPLADE, "inputs": SHORT[:count]}
            wait_idle(stack.redis_url)
            run_wrk(stack.base_url + "/embed_sparse", body, connections=clients, seconds=2)
            wait_idle(stack.redis_url)
            rows[(clients, count)] = run_wrk(
                stack.base_url + "/embed_sparse", body, connections=clients, seconds=seconds
            )
    after = ceiling(folder)
    best = (before[0] + after[0]) / 2
    print(
        "\n## Sparse: /embed_sparse on the test SPLADE (MiniLM's BERT, an MLM head over 30,522 tokens), torch float32"
    )
    print(
        f"in-process ceiling, SparseEncoder.encode, 12-word texts: {before[0]:.0f} texts/s (batch {before[1]}) "
        f"before, {after[0]:.0f} (batch {after[1]}) after"
    )
    print(f"{'load':<12} {'texts/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'x ceiling':>9}")
    for (clients, count), result in rows.items():
        rate = result.requests_per_s * count
        print(
            f"{f'{clients} x {count}':<12} {rate:8.0f} {result.p50_ms:8.1f} {result.p99_ms:8.1f} "
            f"{result.errors:6d} {rate / best:9.2f}"
        )
