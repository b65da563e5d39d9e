"""What ``GET /v1/models`` says of each model: the configured names, and what live workers report of those loaded:
its ``kind`` (``embedding``, ``sparse``, ``multivector``, ``reranker``), the ``routes`` that kind is served on and
the ``modalities`` it takes (``text``; ``image`` too for a CLIP-style model).

Workers may serve one model on different runtimes or precisions (a fleet of mixed hosts, or a changed ``DTYPE``
during a rollout); their vectors then differ from one request to the next. Such a model's card lists each variant
with its number of workers; ``model_cards`` also answers every model's variants, from which ``api.metrics`` sets
``embeddings_model_variants`` and logs a warning once per combination, so an operator sees it before users do.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import Any, NamedTuple

from shared.kinds import KINDS
from shared.workers import WorkerInfo

#: model -> (backend, dtype) -> how many live workers serve it so
Variants = dict[str, collections.Counter[tuple[str, str]]]


class ModelCards(NamedTuple):
    #: model -> its card
    cards: dict[str, dict[str, Any]]
    #: every model a live worker serves, with its variants
    variants: Variants


def model_cards(configured: Iterable[str], workers: Iterable[WorkerInfo]) -> ModelCards:
    """The cards of the ``configured`` models and of every model a worker serves, and the variants of the latter."""
    cards: dict[str, dict[str, Any]] = {name: {} for name in configured}
    variants: Variants = collections.defaultdict(collections.Counter)
    for worker in workers:
        for name in worker.models:
            card = worker.model_cards.get(name, {})
            cards.setdefault(name, {}).update(card)
            variants[name][(str(card.get("backend", "torch")), str(card.get("dtype", "float32")))] += 1
    for card in cards.values():
        kind = card.get("kind")
        if kind in KINDS:  # what the model's kind offers: the routes that take it (``shared.kinds``)
            card["routes"] = list(KINDS[kind].routes)
            card.setdefault("modalities", ["text"])  # a multimodal model's worker says which it takes
    for name, seen in variants.items():
        if len(seen) > 1:
            cards[name]["variants"] = [
                {"backend": backend, "dtype": dtype, "workers": count}
                for (backend, dtype), count in sorted(seen.items())
            ]
    return ModelCards(cards, dict(variants))
