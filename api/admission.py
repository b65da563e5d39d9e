"""What the API checks before it takes work: that Redis keeps what it is given (``shared.redis_memory``), and that
the result store has room for what the work will keep (``shared.storage``)."""

from __future__ import annotations

from redis.asyncio import Redis

from shared.redis_memory import EvictionGuard, MemoryInfo
from shared.settings import Settings
from shared.storage import StorageBudget, Usage, budget_bytes
from shared.workers import live_workers


class Admission:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._settings = settings
        self.guard = EvictionGuard(redis, allow_evicting=settings.allow_evicting_redis)
        self._budget = StorageBudget(redis)

    async def check_store(self) -> None:
        """ServiceError (STORE_EVICTS) while Redis may delete what it is given."""
        await self.guard.check()

    async def reserve(self, owner_id: str, nbytes: int, expires_at_s: int) -> None:
        """Hold ``nbytes`` of the result store for ``owner_id`` until ``expires_at_s``; ServiceError
        (INSUFFICIENT_STORAGE) if they do not fit, or (STORE_EVICTS) if Redis evicts keys."""
        await self.check_store()
        await self._budget.reserve(owner_id, nbytes, expires_at_s, self.budget(await self.guard.info()))

    async def release(self, owner_id: str) -> None:
        await self._budget.release(owner_id)

    def budget(self, info: MemoryInfo) -> int:
        return budget_bytes(self._settings.store_budget_bytes, self._settings.store_headroom, info.maxmemory)

    async def usage(self) -> tuple[Usage, MemoryInfo]:
        info = await self.guard.info()
        return await self._budget.usage(self.budget(info)), info

    async def dimensions(self, model: str, requested: int | None) -> int:
        """The size of the vectors a job for ``model`` will store, in float32 values: what it asks for, else what a
        live worker reports of the model (a sparse model's ``stored_values``, else its ``dimensions``), else
        ``STORE_ASSUMED_DIMENSIONS``."""
        if requested is not None:
            return requested
        for worker in await live_workers(self._redis, self._settings.worker_ttl_s):
            card = worker.model_cards.get(model)
            if card and card.get("stored_values"):  # a sparse model: what one of its stored rows is bounded by
                return int(card["stored_values"])
            if card and card.get("dimensions"):
                return int(card["dimensions"])
        return self._settings.store_assumed_dimensions
