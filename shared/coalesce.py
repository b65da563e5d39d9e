"""Send many small calls as one: items added while a flush is on its way wait and go together in the next.

At low load an item is flushed on the next event-loop turn, alone; under load batches grow by themselves, the way
the model's batches do, and one Redis round trip serves many requests. The API enqueues with it, the workers
finish jobs with it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")

#: a flush gets each item with its future; it settles the futures it can (the rest may be settled elsewhere later)
Flush = Callable[[list[tuple[Item, "asyncio.Future[Result]"]]], Awaitable[None]]


class Coalescer(Generic[Item, Result]):
    def __init__(self, flush: Flush[Item, Result], name: str) -> None:
        self._flush = flush
        self._name = name
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._draining: asyncio.Task[None] | None = None

    def add(self, item: Item, future: asyncio.Future[Result] | None = None) -> asyncio.Future[Result]:
        """Queue ``item`` for the next flush; returns its future (``future``, or a new one)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future() if future is None else future
        self._pending.append((item, future))
        if self._draining is None:
            self._draining = loop.create_task(self._drain(), name=f"coalesce:{self._name}")
        return future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                batch = [(item, future) for item, future in batch if not future.done()]
                if not batch:
                    continue
                try:
                    await self._flush(batch)
                except Exception as exc:  # every waiter in the batch learns of it; the loop goes on
                    log.exception("%s: a flush of %d items failed", self._name, len(batch))
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
        finally:
            self._draining = None
