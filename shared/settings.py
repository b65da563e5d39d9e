"""Deployment settings, read from the environment (and ``.env``), validated, built by ``get_settings()``.

The API and the workers read the same variables; each uses the part it needs.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

#: what a Hugging Face hub model id looks like: "name" or "owner/name"
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # Redis
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_connect_timeout_s: float = Field(2.0, gt=0)
    redis_op_timeout_s: float = Field(5.0, gt=0)
    #: Redis Sentinel: the sentinels ("host:port,host:port"); with them, the primary is found through the sentinels
    #: by ``redis_sentinel_master``, and ``redis_url`` gives only its password and database
    redis_sentinels: Annotated[list[str], NoDecode] = []
    redis_sentinel_master: str = "mymaster"
    #: serve even though Redis evicts keys (a maxmemory-policy other than noeviction): results may then vanish, and
    #: are reported lost (410 job_lost) rather than returned short
    allow_evicting_redis: bool = False
    #: bytes of Redis the results of jobs, batches and uploads may reserve; 0: Redis' maxmemory less store_headroom
    #: of it (no bound when Redis has no maxmemory either)
    store_budget_bytes: int = Field(0, ge=0)
    #: the share of maxmemory kept out of the budget, for synchronous requests and replies and queue overhead
    store_headroom: float = Field(0.25, ge=0.05, lt=1)
    #: vector size assumed for a model no live worker has reported yet, when a job's size is reckoned
    store_assumed_dimensions: int = Field(1024, ge=1)
    #: tries a worker makes to store a chunk's results while Redis is out of memory, pausing 0.5 s, 1 s, 2 s, ...
    #: (at most 8 s, jittered) between them; then the chunk fails with insufficient_storage in its job's errors
    store_write_attempts: int = Field(6, ge=1)

    # Models
    #: models workers load and warm up at start; also what ``/v1/models`` lists before any request
    embed_models: Annotated[list[str], NoDecode] = [DEFAULT_MODEL]
    #: the reranker TEI-shaped ``POST /rerank`` requests use when they name none (TEI serves one model)
    default_rerank_model: str | None = None
    max_loaded_models: int = Field(4, ge=1)
    #: seconds a model that failed to load keeps failing fast before a new attempt
    model_failure_ttl_s: float = Field(30.0, ge=0)
    #: models served from a folder, by name: "acme/minilm=/models/minilm,..." (a client's name never becomes a path)
    model_paths: Annotated[dict[str, Path], NoDecode] = {}
    #: what token-id input means: OpenAI's cl100k_base ids (as OpenAI and LangChain send them), or the model's own
    token_ids: Literal["openai", "model"] = "openai"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: where the transformer runs: auto is torch on CUDA, and on CPU OpenVINO, else ONNX Runtime, else torch
    backend: Literal["auto", "torch", "onnx", "openvino"] = "auto"
    #: folder of exported models (ONNX, OpenVINO), shared by restarts and workers; default: $HF_HOME/exports
    export_dir: Path | None = None
    #: int8: ONNX Runtime with dynamically quantized weights (faster on CPUs with VNNI; visibly different vectors)
    quantize: Literal["none", "int8"] = "none"
    #: the precision models compute in. auto: float32 on CPU (the same vectors on every host); on CUDA bfloat16
    #: where the GPU has it, else float16 (float32 for models that overflow in float16). bfloat16 or float16 only
    #: where the device computes it natively (a worker refuses to start otherwise), checked at load against float32
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    #: threads of the model runtime; 0: the CPUs this worker may use (affinity and cgroup quota)
    worker_threads: int = Field(0, ge=0)
    hugging_face_hub_token: SecretStr | None = None

    # Security (API)
    #: accepted API keys (comma separated); with none here nor in api_key_hashes_file, the API is open
    api_keys: Annotated[list[SecretStr], NoDecode] = []
    #: a file of SHA-256 hex digests of accepted keys, one a line, so the keys themselves live nowhere
    api_key_hashes_file: Path | None = None
    #: /metrics needs a key too
    protect_metrics: bool = False
    #: origins allowed by CORS (comma separated); none: no CORS headers at all
    cors_allow_origins: Annotated[list[str], NoDecode] = []
    #: API processes ``python -m api`` runs (uvicorn's workers), each with its own reply list; 0: the CPUs the API
    #: may use (affinity and cgroup quota), at most 4
    api_workers: int = Field(1, ge=0)

    # Model policy (worker and API)
    #: models that may be requested, besides embed_models (comma separated)
    allowed_models: Annotated[list[str], NoDecode] = []
    #: let clients load any hub model on demand
    allow_any_model: bool = False
    #: models whose repository code may run (trust_remote_code); never any other
    trust_remote_code_models: Annotated[list[str], NoDecode] = []

    # Request limits (API)
    max_inputs_per_request: int = Field(2048, ge=1)
    #: documents in one rerank request
    max_rerank_documents: int = Field(1000, ge=1)
    max_input_chars: int = Field(50_000, ge=1)
    #: model tokens in one request (checked by the worker, which has the tokenizer)
    max_tokens_per_request: int = Field(500_000, ge=1)
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    #: seconds a synchronous request may wait for its vectors before a 504
    request_timeout_s: float = Field(60.0, gt=0)
    #: cut inputs longer than the model's maximum sequence length (else: 400 context_length_exceeded)
    truncate_inputs: bool = True
    #: embedding requests that do not say ``truncate`` split an over-long input into chunks at the model's maximum
    #: length and average their vectors (``truncate: "chunk"``), rather than cut or refuse it as truncate_inputs says
    chunk_long_inputs: bool = False
    #: tokens each chunk of a chunked input repeats from the end of the chunk before it
    chunk_overlap_tokens: int = Field(0, ge=0)

    # Images (worker): decoded and fetched only by workers, within these bounds
    #: hosts image URLs may be fetched from (comma separated, exact names); none: data URIs only. Never loopback,
    #: link-local or private addresses, whatever the name resolves to
    image_url_hosts: Annotated[list[str], NoDecode] = []
    #: bytes of one image, encoded (a data URI's payload, or a fetched body)
    image_max_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    #: pixels of one image (width x height), read from its header before it is decoded
    image_max_pixels: int = Field(4096 * 4096, ge=1)
    #: image formats accepted (Pillow's names); anything else is a 400
    image_formats: Annotated[list[str], NoDecode] = ["PNG", "JPEG", "WEBP"]
    #: seconds to fetch one image URL, connection included
    image_fetch_timeout_s: float = Field(5.0, gt=0)

    # Batching (worker); unset: what suits the device (``batch_limits``)
    max_batch_size: int | None = Field(None, ge=1)
    #: padded tokens (longest input x batch size) a batch may hold
    max_batch_tokens: int | None = Field(None, ge=1)
    #: queue jobs a worker holds at once; the rest wait in Redis for any worker
    worker_max_jobs: int = Field(256, ge=1)
    #: texts a worker claims ahead of its model; the rest wait for any worker. Unset: a few of the device's largest
    #: batches (``worker.models.device_budget.prefetch_texts``: 128 on CPU, 2048 on a GPU)
    worker_prefetch_texts: int | None = Field(None, ge=1)
    #: seconds between a worker's heartbeats; it counts as gone after three missed ones
    worker_heartbeat_s: float = Field(2.0, gt=0)

    # Asynchronous jobs (/v1/embeddings/jobs)
    max_job_inputs: int = Field(100_000, ge=1)
    #: texts per chunk; chunks are what workers share out
    job_chunk_size: int = Field(256, ge=1)
    #: seconds a finished job's vectors are kept
    job_result_ttl_s: int = Field(86_400, ge=1)
    #: texts of asynchronous jobs queued, deployment-wide, beyond which new jobs get 429
    max_queued_job_texts: int = Field(2_000_000, ge=1)
    #: chunks a worker holds at once, so the chunks of a job spread over all workers
    worker_max_chunks: int = Field(2, ge=1)

    # The OpenAI Batch API (/v1/files, /v1/batches); OpenAI's limits by default
    max_batch_requests: int = Field(50_000, ge=1)
    #: inputs across all requests of one batch
    max_batch_inputs: int = Field(50_000, ge=1)
    max_batch_file_bytes: int = Field(200 * 1024 * 1024, ge=1024)
    #: seconds a batch may take (its ``completion_window``, which clients send as "24h"); then it expires
    batch_completion_window_s: int = Field(86_400, ge=1)

    # Fault tolerance
    #: seconds a job stays claimed by a worker that stopped renewing it (crashed); then another worker re-runs it
    job_lease_s: float = Field(10.0, gt=0)
    #: runs of one job before its client gets an error (a job that keeps killing workers)
    max_job_attempts: int = Field(3, ge=1)
    #: texts queued or being encoded, deployment-wide, beyond which new requests get 429
    max_queued_texts: int = Field(20_000, ge=1)
    #: texts one API key may have queued or being encoded (of max_queued_texts), beyond which its new requests get
    #: 429 key_backlog_full while other keys are still served; unset: half of max_queued_texts when API keys are
    #: configured, so one key filling its share leaves the other half to the rest, and all of it when none are
    #: (every request is then one key's, "anonymous"). At most max_queued_texts
    max_queued_texts_per_key: int | None = Field(None, ge=1)
    #: seconds a worker asked to stop (SIGTERM) may spend finishing the jobs it holds
    shutdown_grace_s: float = Field(30.0, ge=0)

    # Benchmarks (worker): "stub" returns constant vectors at once, to measure the pipeline alone; "simulated"
    # also sleeps per batch like a GPU would, to measure scaling across workers
    encoder: Literal["model", "stub", "simulated"] = "model"
    simulated_batch_ms: float = Field(2.0, ge=0)
    simulated_ms_per_1k_tokens: float = Field(10.0, ge=0)

    # Fault injection, for tests only (worker): slow every batch, fail or kill on a token id, fail big batches,
    # raise a sticky CUDA error (an illegal memory access) on a token id
    fault_encode_delay_s: float = Field(0.0, ge=0)
    fault_poison_token: int | None = None
    fault_crash_token: int | None = None
    fault_oom_above: int | None = Field(None, ge=1)
    fault_sticky_token: int | None = None

    #: port of a worker's Prometheus /metrics (0: none); the API serves its own on its HTTP port
    worker_metrics_port: int = Field(0, ge=0, le=65535)
    worker_metrics_address: str = "127.0.0.1"
    #: a file a worker writes once its start-up models (``EMBED_MODELS``) are loaded and removes when it stops:
    #: what a readiness probe checks (Kubernetes: ``test -f``)
    ready_file: Path | None = None

    #: FastAPI's own OpenTelemetry spans, metrics and logs, through the global providers (API). Off: /metrics
    #: covers the same ground, and FastAPI's instrumentation costs CPU on every request even with no provider set
    otel_instrumentation: bool = False

    log_level: str = "INFO"

    @field_validator(
        "embed_models",
        "api_keys",
        "cors_allow_origins",
        "allowed_models",
        "trust_remote_code_models",
        "redis_sentinels",
        "image_url_hosts",
        "image_formats",
        mode="before",
    )
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @model_validator(mode="after")
    def _runtime_computes_the_precision(self) -> Settings:
        if self.quantize == "int8" and self.backend in ("torch", "openvino"):
            raise ValueError("QUANTIZE=int8 runs on ONNX Runtime: set BACKEND=onnx (or auto)")
        if self.quantize == "int8" and self.dtype not in ("auto", "float32"):
            raise ValueError(f"QUANTIZE=int8 computes in float32 on ONNX Runtime, not DTYPE={self.dtype}")
        if self.backend == "onnx" and self.dtype not in ("auto", "float32"):
            raise ValueError(
                f"ONNX Runtime's CPU provider computes float32 only: DTYPE={self.dtype} needs BACKEND=openvino, "
                "torch or auto"
            )
        return self

    @model_validator(mode="after")
    def _a_key_shares_the_backlog(self) -> Settings:
        share, bound = self.max_queued_texts_per_key, self.max_queued_texts
        if share is not None and share > bound:
            raise ValueError(
                f"MAX_QUEUED_TEXTS_PER_KEY={share} is more than the whole backlog, MAX_QUEUED_TEXTS={bound}: set it "
                f"to {bound} at most ({bound}: any key may fill the queue), or unset it"
            )
        return self

    @field_validator("model_paths", mode="before")
    @classmethod
    def _split_pairs(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        pairs = {}
        for item in filter(None, (part.strip() for part in value.split(","))):
            name, sep, path = item.partition("=")
            if not sep or not name.strip() or not path.strip():
                raise ValueError(f"MODEL_PATHS entries are name=/path/to/folder, not {item!r}")
            pairs[name.strip()] = path.strip()
        return pairs

    def model_allowed(self, name: str) -> bool:
        """Configured models always; with ``allow_any_model``, any hub id too, but never a local path."""
        if name in (*self.embed_models, *self.allowed_models, *self.model_paths, self.default_rerank_model):
            return True
        return self.allow_any_model and _HUB_ID.fullmatch(name) is not None and ".." not in name

    @property
    def queued_texts_per_key(self) -> int:
        """Each API key's share of ``max_queued_texts`` (see ``max_queued_texts_per_key``)."""
        if self.max_queued_texts_per_key is not None:
            return self.max_queued_texts_per_key
        if self.api_keys or self.api_key_hashes_file is not None:
            return (self.max_queued_texts + 1) // 2
        return self.max_queued_texts

    @property
    def worker_ttl_s(self) -> float:
        return 3 * self.worker_heartbeat_s


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
