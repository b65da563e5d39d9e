"""Models loaded on demand, each with its own micro-batcher; a bounded LRU set; failed loads fail fast for a while."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeGuard

from shared.errors import ErrorKind, ServiceError
from worker import metrics
from worker.batcher import MicroBatcher, Stages
from worker.models.device_budget import batch_limits
from worker.models.encoder_protocol import Model

log = logging.getLogger(__name__)


@dataclasses.dataclass(slots=True)
class LoadedModel:
    name: str
    #: an embedding model or a reranker (``kind`` says which)
    model: Model
    batcher: MicroBatcher[Any]
    executor: ThreadPoolExecutor

    async def unload(self) -> None:
        await self.batcher.close()
        self.executor.shutdown(wait=False)


def has_stages(model: Model) -> TypeGuard[Stages[Any]]:
    """Whether the model's own class splits ``encode`` into ``collate`` and ``run`` (``batcher.Stages``).

    The class, not the object: a wrapper that forwards attributes (``worker.models.faults``) must be called
    through its own ``encode``."""
    return all(callable(getattr(type(model), name, None)) for name in ("collate", "run"))


class ModelRegistry:
    def __init__(
        self,
        load: Callable[[str], Model],
        *,
        max_loaded: int,
        failure_ttl_s: float,
        max_batch_size: int | None = None,
        max_batch_tokens: int | None = None,
    ) -> None:
        self._load = load
        self._max_loaded = max_loaded
        self._failure_ttl_s = failure_ttl_s
        self._max_batch_size = max_batch_size
        self._max_batch_tokens = max_batch_tokens
        self._loaded: collections.OrderedDict[str, LoadedModel] = collections.OrderedDict()
        self._loading: dict[str, asyncio.Future[LoadedModel]] = {}
        self._failures: dict[str, tuple[float, ServiceError]] = {}

    def loaded_names(self) -> list[str]:
        return list(self._loaded)

    def describe_loaded(self) -> dict[str, dict[str, Any]]:
        """What ``GET /v1/models`` says of each loaded model."""
        return {name: loaded.model.describe() for name, loaded in self._loaded.items()}

    async def get(self, name: str, timeout_s: float | None = None) -> LoadedModel:
        """The model, loaded if need be; TimeoutError if loading takes longer than ``timeout_s`` (it goes on)."""
        model = self._loaded.get(name)
        if model is not None:
            self._loaded.move_to_end(name)
            return model
        failure = self._failures.get(name)
        if failure is not None and failure[0] > time.monotonic():
            raise failure[1]
        loading = self._loading.get(name)
        if loading is None:
            loading = asyncio.get_running_loop().create_future()
            self._loading[name] = loading
            asyncio.get_running_loop().create_task(self._load_into(name, loading))
        return await asyncio.wait_for(asyncio.shield(loading), timeout_s)

    async def close(self) -> None:
        for model in self._loaded.values():
            await model.unload()
        self._loaded.clear()

    async def _load_into(self, name: str, loading: asyncio.Future[LoadedModel]) -> None:
        started = time.perf_counter()
        try:
            encoder = await asyncio.to_thread(self._load, name)
        except ServiceError as exc:
            metrics.MODEL_LOADS.labels(name, exc.kind.value).inc()
            self._failures[name] = (time.monotonic() + self._failure_ttl_s, exc)
            loading.set_exception(exc)
        except Exception:
            metrics.MODEL_LOADS.labels(name, "error").inc()
            log.exception("loading model %r failed", name)
            error = ServiceError(ErrorKind.MODEL_UNAVAILABLE, f"model {name!r} could not be loaded", "model")
            self._failures[name] = (time.monotonic() + self._failure_ttl_s, error)
            loading.set_exception(error)
        else:
            self._failures.pop(name, None)
            limits = await asyncio.to_thread(batch_limits, encoder, self._max_batch_size, self._max_batch_tokens)
            size, tokens = limits.max_batch_size, limits.max_batch_tokens
            await self._make_room()
            overlap = encoder.device.startswith("cuda") and has_stages(encoder)
            executor = ThreadPoolExecutor(max_workers=2 if overlap else 1, thread_name_prefix=f"encode-{name}")
            batcher: MicroBatcher[Any] = MicroBatcher(
                encoder if has_stages(encoder) else encoder.encode,
                executor=executor,
                max_batch_size=size,
                max_batch_tokens=tokens,
                name=name,
                overlap=overlap,
            )
            model = LoadedModel(name, encoder, batcher, executor)
            self._loaded[name] = model
            metrics.MODEL_LOADS.labels(name, "loaded").inc()
            metrics.LOADED_MODELS.set(len(self._loaded))
            backend = encoder.describe().get("backend", "torch")
            metrics.MODEL_BACKEND.labels(name, backend).set(1)
            log.info(
                "model %r loaded on %s (%s, batches of up to %d sequences and %d tokens%s) in %.1fs",
                *(name, encoder.device, backend, size, tokens, ", overlapped" if overlap else ""),
                time.perf_counter() - started,
            )
            loading.set_result(model)
        finally:
            del self._loading[name]
            # nobody may be waiting any more; retrieving the exception keeps asyncio from logging it
            if loading.done() and not loading.cancelled():
                loading.exception()

    async def _make_room(self) -> None:
        """Unload the least recently used idle models until one more fits."""
        for name, loaded in list(self._loaded.items()):
            if len(self._loaded) < self._max_loaded:
                return
            if loaded.batcher.pending == 0 and not loaded.batcher.busy:
                del self._loaded[name]
                await loaded.unload()
                metrics.MODEL_BACKEND.remove(name, loaded.model.describe().get("backend", "torch"))
                log.info("model %r unloaded to make room", name)
