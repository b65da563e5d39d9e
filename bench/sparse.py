"""Sparse models: the stack's ``/embed_sparse`` against the in-process ceiling, ``SparseEncoder.encode`` at its best
batch size (torch float32, what the worker runs too), on the test SPLADE (MiniLM's BERT with a seeded MLM head,
``tests.model_fixtures``), at 16 clients x 32 short texts a request and 64 clients x 1.

    .venv/bin/python -m bench.run --only sparse

The ceiling is measured before and after the stack ran (the machine drifts); the ratios use the mean of the two.
"""

from __future__ import annotations

from pathlib import Path

from bench.kinds import Ceiling, load_rows, print_table
from bench.run import SHORT
from tests.model_fixtures import SPLADE, build_sparse, model_paths_setting
from tests.stack import running_stack

#: (clients, texts a request)
LOADS = ((16, 32), (64, 1))


def ceiling(folder: Path) -> Ceiling:
    """``SparseEncoder.encode`` on 12-word texts."""
    from sentence_transformers import SparseEncoder

    model = SparseEncoder(str(folder), device="cpu")
    texts = SHORT * 4
    return Ceiling(lambda size: model.encode(texts, batch_size=size, convert_to_sparse_tensor=False), len(texts))


def sparse_section(logs: Path, seconds: float) -> None:
    folder = build_sparse(logs / "sparse-models")[SPLADE]
    library = ceiling(folder)
    library.measure()
    bodies: dict[tuple[int, int], dict[str, object]] = {
        (clients, count): {"model": SPLADE, "inputs": SHORT[:count]} for clients, count in LOADS
    }
    with running_stack(
        logs / "sparse", MODEL_PATHS=model_paths_setting({SPLADE: folder}), EMBED_MODELS=SPLADE
    ) as stack:
        rows = load_rows(stack.base_url + "/embed_sparse", bodies, stack.redis_url, seconds)
    library.measure()
    print_table(
        "Sparse: /embed_sparse on the test SPLADE (MiniLM's BERT, an MLM head over 30,522 tokens), torch float32",
        library,
        "SparseEncoder.encode, 12-word texts",
        rows,
        "texts",
    )
