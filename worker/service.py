"""What a worker does with the jobs it claims: the embedding and rerank pipelines (``worker.pipeline``,
``worker.reranking``, both on ``worker.task_pipeline``'s skeleton) and the two job lifecycles around them, one per
queue (``worker.sync_jobs``, ``worker.chunk_jobs``), which count the jobs they end in ``worker.metrics.JOBS``: the
heartbeat reports its counts."""

from __future__ import annotations

from redis.asyncio import Redis

from shared.job_queue import JobQueue
from shared.settings import get_settings
from worker.chunk_jobs import ChunkJobs
from worker.dead_letter import DeadLetters
from worker.models.registry import ModelRegistry
from worker.multivector_pipeline import MultiVectorPipeline
from worker.pipeline import EmbeddingPipeline
from worker.reranking import RerankPipeline
from worker.sparse_pipeline import SparsePipeline
from worker.sync_jobs import SyncJobs
from worker.tokenizing import Tokenizing


class TaskService:
    def __init__(
        self,
        registry: ModelRegistry,
        redis: Redis,
        worker_id: str,
        *,
        max_attempts: int,
        max_tokens: int = 1 << 62,
        openai_token_ids: bool = False,
        store_attempts: int = 6,
    ) -> None:
        """``openai_token_ids``: token-id input is OpenAI's cl100k_base ids (``TOKEN_IDS=openai``), not the model's."""
        self.registry = registry
        self.worker_id = worker_id
        self.pipeline = EmbeddingPipeline(
            registry,
            max_tokens=max_tokens,
            openai_token_ids=openai_token_ids,
            chunk_overlap_tokens=get_settings().chunk_overlap_tokens,
        )
        dead_letters = DeadLetters(redis, worker_id)
        reranking = RerankPipeline(registry, max_tokens=max_tokens)
        sparse = SparsePipeline(registry, max_tokens=max_tokens)
        self._sync = SyncJobs(
            self.pipeline,
            reranking,
            JobQueue.sync(redis),
            dead_letters,
            max_attempts=max_attempts,
            tokenizing=Tokenizing(registry, max_tokens=max_tokens),
            multivector=MultiVectorPipeline(registry, max_tokens=max_tokens),
            sparse=sparse,
        )
        self._chunks = ChunkJobs(
            self.pipeline,
            redis,
            JobQueue.chunks(redis),
            dead_letters,
            max_attempts=max_attempts,
            store_attempts=store_attempts,
            sparse=sparse,
        )
        self.handle = self._sync.handle
        self.handle_entry = self._sync.handle_entry
        self.handle_chunk = self._chunks.handle

    @property
    def largest_batch(self) -> tuple[int, int]:
        return self.pipeline.largest_batch
