"""What ``GET /v1/models`` says of each model: the configured names, and what live workers report of those loaded.

Workers may serve one model on different runtimes or precisions (a fleet of mixed hosts, or a changed ``DTYPE``
during a rollout); their vectors then differ from one request to the next. Such a model's card lists each variant
with its number of workers, the API logs a warning once per combination, and ``embeddings_model_variants`` counts
them, so an operator sees it before users do.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterable
from typing import Any

from prometheus_client import Gauge

from shared.workers import WorkerInfo

log = logging.getLogger(__name__)

MODEL_VARIANTS = Gauge(
    "embeddings_model_variants", "Distinct (backend, dtype) pairs live workers serve a model with", ["model"]
)

_warned: set[tuple[str, frozenset[tuple[str, str]]]] = set()


def model_cards(configured: Iterable[str], workers: Iterable[WorkerInfo]) -> dict[str, dict[str, Any]]:
    cards: dict[str, dict[str, Any]] = {name: {} for name in configured}
    variants: dict[str, collections.Counter[tuple[str, str]]] = collections.defaultdict(collections.Counter)
    for worker in workers:
        for name in worker.models:
            card = worker.model_cards.get(name, {})
            cards.setdefault(name, {}).update(card)
            variants[name][(str(card.get("backend", "torch")), str(card.get("dtype", "float32")))] += 1
    for name, seen in variants.items():
        MODEL_VARIANTS.labels(name).set(len(seen))
        if len(seen) > 1:
            cards[name]["variants"] = [
                {"backend": backend, "dtype": dtype, "workers": count}
                for (backend, dtype), count in sorted(seen.items())
            ]
            _warn_once(name, seen)
    return cards


def _warn_once(name: str, seen: collections.Counter[tuple[str, str]]) -> None:
    key = (name, frozenset(seen))
    if key in _warned:
        return
    _warned.add(key)
    described = ", ".join(f"{backend} {dtype} ({count} workers)" for (backend, dtype), count in sorted(seen.items()))
    log.warning("model %r is served with different runtimes or precisions: %s; its vectors differ", name, described)
