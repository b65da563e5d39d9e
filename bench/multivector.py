"""Multi-vector (ColBERT-style) models: the stack's ``/pooling`` (``token_embed``, base64: the answers are large)
against the in-process ceiling, ``MultiVectorEncoder.encode`` at its best batch size (torch float32, what the worker
runs too), on the test multi-vector model (MiniLM with a seeded 384->128 projection, ``tests.model_fixtures``), at 16
clients x 32 short texts a request and 64 clients x 1.

    .venv/bin/python -m bench.run --only multivector

The ceiling is measured before and after the stack ran (the machine drifts); the ratios use the mean of the two.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from bench.load import LoadResult, run_wrk
from bench.run import SHORT, wait_idle
from tests.model_fixtures import MULTIVECTOR_MODEL, model_paths_setting, save_multivector
from tests.stack import running_stack

BATCH_SIZES = (8, 16, 32, 64)
#: (clients, texts a request)
LOADS = ((16, 32), (64, 1))


def ceiling(folder: Path) -> tuple[float, int]:
    """Texts/s of ``MultiVectorEncoder.encode`` at its best batch size, and that size."""
    from sentence_transformers import MultiVectorEncoder

    model = MultiVectorEncoder(str(folder), device="cpu")
    texts = SHORT * 4
    return _best(lambda size: model.encode(texts, batch_size=size, convert_to_numpy=True), len(texts))


def _best(run: Callable[[int], object], texts: int, rounds: int = 3) -> tuple[float, int]:
    run(32)  # warm-up
    best = (0.0, 0)
    for batch_size in BATCH_SIZES:
        for _ in range(rounds):
            started = time.perf_counter()
            run(batch_size)
            best = max(best, (texts / (time.perf_counter() - started), batch_size))
    return best


def multivector_section(logs: Path, seconds: float) -> None:
    folder = save_multivector(logs / "multivector-models")[MULTIVECTOR_MODEL]
    before = ceiling(folder)
    rows: dict[tuple[int, int], LoadResult] = {}
    with running_stack(
        logs / "multivector",
        MODEL_PATHS=model_paths_setting({MULTIVECTOR_MODEL: folder}),
        EMBED_MODELS=MULTIVECTOR_MODEL,
    ) as stack:
        for clients, count in LOADS:
            body = {
                "model": MULTIVECTOR_MODEL,
                "input": SHORT[:count],
                "task": "token_embed",
                "encoding_format": "base64",
            }
            wait_idle(stack.redis_url)
            run_wrk(stack.base_url + "/pooling", body, connections=clients, seconds=2)
            wait_idle(stack.redis_url)
            rows[(clients, count)] = run_wrk(stack.base_url + "/pooling", body, connections=clients, seconds=seconds)
    after = ceiling(folder)
    best = (before[0] + after[0]) / 2
    print(
        "\n## Multi-vector: /pooling (token_embed, base64) on the test multi-vector model (MiniLM's BERT, a 384->128 "
        "projection, a vector a token), torch float32"
    )
    print(
        f"in-process ceiling, MultiVectorEncoder.encode, 12-word texts: {before[0]:.0f} texts/s (batch {before[1]}) "
        f"before, {after[0]:.0f} (batch {after[1]}) after"
    )
    print(f"{'load':<12} {'texts/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'x ceiling':>9}")
    for (clients, count), result in rows.items():
        rate = result.requests_per_s * count
        print(
            f"{f'{clients} x {count}':<12} {rate:8.0f} {result.p50_ms:8.1f} {result.p99_ms:8.1f} "
            f"{result.errors:6d} {rate / best:9.2f}"
        )
