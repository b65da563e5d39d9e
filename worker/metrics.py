"""Prometheus metrics of a worker process, served on ``WORKER_METRICS_PORT`` when it is set."""

from __future__ import annotations

from typing import Literal, get_args

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from shared.kinds import MODEL_KINDS, ModelKind

BATCH_SIZE = Histogram(
    "embeddings_batch_size", "Sequences per forward pass", ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
)
BATCH_TOKENS = Histogram(
    "embeddings_batch_tokens",
    "Padded tokens per forward pass",
    ["model"],
    buckets=(64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536),
)
BATCH_REQUESTS = Histogram(
    "embeddings_batch_requests", "Requests sharing a forward pass", ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128)
)
INFERENCE_SECONDS = Histogram(
    "embeddings_inference_seconds",
    "Time of one forward pass",
    ["model"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
BATCH_TOKEN_BUDGET = Gauge(
    "embeddings_batch_token_budget",
    "Padded tokens a batch may hold (lowered when a batch runs out of memory)",
    ["model"],
)
BATCH_OUT_OF_MEMORY = Counter("embeddings_batch_out_of_memory_total", "Batches that ran out of memory", ["model"])
QUEUE_WAIT_SECONDS = Histogram(
    "embeddings_queue_wait_seconds",
    "Time from enqueue to a worker starting the job",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
#: what a job a worker took ended as, one count each: a sync job ``answered`` (with its result or an error),
#: ``expired`` (skipped: its deadline had passed) or ``abandoned`` (after too many attempts); a chunk stored with
#: its results (``chunk``), failed as a whole (``chunk_failed``) or ``abandoned``; an entry of either queue that
#: no worker can read, ``dead_letter``. A chunk given back to the queue, or stored with nothing run (cancelled,
#: expired), is not counted.
JobOutcome = Literal["answered", "expired", "abandoned", "dead_letter", "chunk", "chunk_failed"]
JOB_OUTCOMES: tuple[JobOutcome, ...] = get_args(JobOutcome)
#: the one place jobs are counted: the heartbeat reports what it holds (``job_counts``)
JOBS = Counter("embeddings_worker_jobs_total", "Jobs handled", ["outcome"])
#: each outcome's series, looked up once (``labels`` locks and hashes on every call, and this runs once a job);
#: every outcome is exposed, at 0 until it happens
_JOB_SERIES = {outcome: JOBS.labels(outcome) for outcome in JOB_OUTCOMES}
ERRORS = Counter("embeddings_worker_errors_total", "Jobs answered with an error, by kind", ["kind"])
#: tasks run on a model, and their inputs (texts, documents), by the model's kind (``shared.kinds``)
MODEL_TASKS = Counter("embeddings_worker_model_tasks_total", "Tasks run on a model, by the model's kind", ["kind"])
MODEL_INPUTS = Counter(
    "embeddings_worker_model_inputs_total", "Inputs of the tasks run on a model, by the model's kind", ["kind"]
)
#: each kind's series, looked up once, as ``_JOB_SERIES``; every kind is exposed, at 0 until a task runs on one
_KIND_SERIES = {kind: (MODEL_TASKS.labels(kind), MODEL_INPUTS.labels(kind)) for kind in MODEL_KINDS}
MODEL_LOADS = Counter("embeddings_model_loads_total", "Model loads", ["model", "outcome"])
MODEL_BACKEND = Gauge("embeddings_model_backend", "1 for the runtime each loaded model runs on", ["model", "backend"])
LOADED_MODELS = Gauge("embeddings_loaded_models", "Models loaded in this worker")
HELD_TEXTS = Gauge("embeddings_worker_held_texts", "Texts of the jobs this worker holds")


def count_task(kind: ModelKind, inputs: int) -> None:
    """A task ran on a model of ``kind`` with ``inputs`` inputs."""
    tasks, counted = _KIND_SERIES[kind]
    tasks.inc()
    counted.inc(inputs)


def count_job(outcome: JobOutcome) -> None:
    _JOB_SERIES[outcome].inc()


def job_counts() -> dict[str, int]:
    """This process's job counts by outcome, read from ``JOBS``: what the heartbeat reports
    (``WorkerInfo.counters``, summed over the live workers by the API as ``embeddings_live_worker_jobs``)."""
    return {
        sample.labels["outcome"]: int(sample.value)
        for metric in JOBS.collect()
        for sample in metric.samples
        if sample.name == "embeddings_worker_jobs_total"
    }


def serve(port: int, address: str) -> None:
    start_http_server(port, addr=address)
