"""Rerank: 16 clients, each request 1 query and 20 documents of 30-60 words, against the in-process ceilings
(``CrossEncoder.predict`` at its best batch size, torch float32; the worker's own reranker on OpenVINO float32, its
pairs sorted by length, at its best batch size) and against Infinity 0.0.78's ``/rerank`` on the same model (torch
engine, batch 32, its own venv), in one run.

    .venv/bin/python -m bench.run --only rerank

Each server is driven for at least 40 s: a request takes seconds here, and the work in flight when wrk stops is
lost to the count, a share that only a long run makes small. The ceiling is measured before and after the servers
(the machine drifts); the ratios use the mean of the two.

Infinity is run from ``.venv-infinity`` (``make infinity-venv`` makes it: its pins conflict with ours); without it
that row is skipped. The model is MiniLM with a seeded one-logit head and a Sigmoid (``tests.model_fixtures``),
the activation Infinity applies to every model, so both servers compute the same scores.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.load import LoadResult, run_wrk
from bench.run import sentence, wait_idle
from tests.model_fixtures import build_rerankers, model_paths_setting
from tests.stack import free_port, running_stack, spawn, stop, wait_for_port

RERANKER = "test/reranker-sigmoid"
CLIENTS = 16
DOCUMENTS = [sentence(random.Random(5000 + i), random.Random(i).randint(30, 60)) for i in range(20)]
QUERY = "which mountain city has the fastest music service"
INFINITY = Path(__file__).resolve().parents[1] / ".venv-infinity" / "bin" / "infinity_emb"
BATCH_SIZES = (8, 16, 32, 64)
MIN_SECONDS = 40


def ceilings(folder: Path, exports: Path) -> dict[str, tuple[float, int]]:
    """Pairs/s at the best batch size, and that size: ``CrossEncoder.predict`` on torch, and the worker's reranker
    on OpenVINO (tokenized ahead, as the worker does while the model runs)."""
    from sentence_transformers import CrossEncoder

    from shared.settings import Settings
    from worker.models.source import load_model

    model = CrossEncoder(str(folder), device="cpu")  # float32, torch's own threads
    pairs = [(QUERY, document) for document in DOCUMENTS] * 16
    settings = Settings(_env_file=None, model_paths={RERANKER: folder}, backend="openvino", export_dir=exports)
    reranker = load_model(RERANKER, settings)
    assert reranker.kind == "reranker" and reranker.describe()["backend"] == "openvino"
    tokenized = sorted(reranker.pairs(QUERY, DOCUMENTS, truncate=True) * 16, key=len)

    def on_openvino(batch_size: int) -> None:
        for start in range(0, len(tokenized), batch_size):
            reranker.encode(tokenized[start : start + batch_size])

    return {
        "CrossEncoder.predict, torch": _best(lambda size: model.predict(pairs, batch_size=size), len(pairs)),
        "worker's reranker, OpenVINO": _best(on_openvino, len(tokenized)),
    }


def _best(run: Callable[[int], object], pairs: int, rounds: int = 3) -> tuple[float, int]:
    run(32)  # warm-up
    best = (0.0, 0)
    for batch_size in BATCH_SIZES:
        for _ in range(rounds):
            started = time.perf_counter()
            run(batch_size)
            best = max(best, (pairs / (time.perf_counter() - started), batch_size))
    return best


def drive(url: str, body: dict[str, object], seconds: float, redis_url: str | None = None) -> LoadResult:
    wait_idle(redis_url)
    run_wrk(url, body, connections=CLIENTS, seconds=2)
    wait_idle(redis_url)
    return run_wrk(url, body, connections=CLIENTS, seconds=seconds)


@contextmanager
def infinity(folder: Path, logs: Path) -> Iterator[str]:
    port = free_port()
    args = ["v2", "--model-id", str(folder), "--engine", "torch", "--device", "cpu", "--batch-size", "32"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
    process = spawn([str(INFINITY), *args, "--host", "127.0.0.1", "--port", str(port)], logs / "infinity.log", env)
    try:
        wait_for_port(port, 300)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


def rerank_section(logs: Path, seconds: float) -> None:
    folder = build_rerankers(logs / "rerankers")[RERANKER]
    seconds = max(seconds, MIN_SECONDS)
    before = ceilings(folder, logs / "exports")
    rows: dict[str, LoadResult] = {}
    paths = model_paths_setting({RERANKER: folder})
    with running_stack(logs / "rerank", MODEL_PATHS=paths, EMBED_MODELS=RERANKER) as stack:
        body = {"model": RERANKER, "query": QUERY, "documents": DOCUMENTS}
        rows["this project"] = drive(stack.base_url + "/v1/rerank", body, seconds, stack.redis_url)
    if INFINITY.exists():
        with infinity(folder, logs) as url:
            rows["Infinity 0.0.78"] = drive(url + "/rerank", {**body, "model": str(folder)}, seconds)
    else:
        print(f"(Infinity skipped: {INFINITY} is missing; make infinity-venv)")
    after = ceilings(folder, logs / "exports")
    mean = {name: (before[name][0] + after[name][0]) / 2 for name in before}
    best_name = max(mean, key=lambda name: mean[name])
    best = mean[best_name]

    print(
        f"\n## Rerank: {CLIENTS} clients x 1 query x {len(DOCUMENTS)} documents of 30-60 words (MiniLM cross-encoder)"
    )
    print("in-process ceilings, float32, pairs/s at the best batch size, before and after the servers ran:")
    for name in before:
        (rate_before, batch_before), (rate_after, batch_after) = before[name], after[name]
        print(f"  {name:<28} {rate_before:6.0f} (batch {batch_before}) {rate_after:6.0f} (batch {batch_after})")
    print(f"x ceiling: against the best mean, {best_name} ({best:.0f} pairs/s)")
    print(f"{'server':<18} {'pairs/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'p99/p50':>8} {'errors':>6} {'x ceiling':>9}")
    for name, result in rows.items():
        pairs = result.requests_per_s * len(DOCUMENTS)
        print(
            f"{name:<18} {pairs:8.0f} {result.p50_ms:8.1f} {result.p99_ms:8.1f} "
            f"{result.p99_ms / result.p50_ms:8.2f} {result.errors:6d} {pairs / best:9.2f}"
        )
    if len(rows) == 2:
        ours, theirs = (result.requests_per_s for result in rows.values())
        print(f"this project / Infinity: {ours / theirs:.2f}x")
