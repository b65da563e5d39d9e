"""Prometheus metrics of a worker process, served on ``WORKER_METRICS_PORT`` when it is set."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

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
QUEUE_WAIT_SECONDS = Histogram(
    "embeddings_queue_wait_seconds",
    "Time from enqueue to a worker starting the job",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
JOBS = Counter("embeddings_worker_jobs_total", "Jobs handled", ["outcome"])
ERRORS = Counter("embeddings_worker_errors_total", "Jobs answered with an error, by kind", ["kind"])
MODEL_LOADS = Counter("embeddings_model_loads_total", "Model loads", ["model", "outcome"])
MODEL_BACKEND = Gauge("embeddings_model_backend", "1 for the runtime each loaded model runs on", ["model", "backend"])
LOADED_MODELS = Gauge("embeddings_loaded_models", "Models loaded in this worker")
HELD_TEXTS = Gauge("embeddings_worker_held_texts", "Texts of the jobs this worker holds")


def serve(port: int, address: str) -> None:
    start_http_server(port, addr=address)
