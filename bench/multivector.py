"""Multi-vector (ColBERT-style) models: the stack's ``/pooling`` (``token_embed``, base64: the answers are large)
against the in-process ceiling, ``MultiVectorEncoder.encode`` at its best batch size (torch float32, what the worker
runs too), on the test multi-vector model (MiniLM with a seeded 384->128 projection, ``tests.model_fixtures``), at 16
clients x 32 short texts a request and 64 clients x 1.

    .venv/bin/python -m bench.run --only multivector

The ceiling is measured before and after the stack ran (the machine drifts); the ratios use the mean of the two.
"""

from __future__ import annotations

from pathlib import Path

from bench.kinds import Ceiling, load_rows, print_table
from bench.run import SHORT
from tests.model_fixtures import MULTIVECTOR_MODEL, model_paths_setting, save_multivector
from tests.stack import running_stack

#: (clients, texts a request)
LOADS = ((16, 32), (64, 1))


def ceiling(folder: Path) -> Ceiling:
    """``MultiVectorEncoder.encode`` on 12-word texts."""
    from sentence_transformers import MultiVectorEncoder

    model = MultiVectorEncoder(str(folder), device="cpu")
    texts = SHORT * 4
    return Ceiling(lambda size: model.encode(texts, batch_size=size, convert_to_numpy=True), len(texts))


def multivector_section(logs: Path, seconds: float) -> None:
    folder = save_multivector(logs / "multivector-models")[MULTIVECTOR_MODEL]
    library = ceiling(folder)
    library.measure()
    bodies: dict[tuple[int, int], dict[str, object]] = {
        (clients, count): {
            "model": MULTIVECTOR_MODEL,
            "input": SHORT[:count],
            "task": "token_embed",
            "encoding_format": "base64",
        }
        for clients, count in LOADS
    }
    with running_stack(
        logs / "multivector",
        MODEL_PATHS=model_paths_setting({MULTIVECTOR_MODEL: folder}),
        EMBED_MODELS=MULTIVECTOR_MODEL,
    ) as stack:
        rows = load_rows(stack.base_url + "/pooling", bodies, stack.redis_url, seconds)
    library.measure()
    print_table(
        "Multi-vector: /pooling (token_embed, base64) on the test multi-vector model (MiniLM's BERT, a 384->128 "
        "projection, a vector a token), torch float32",
        library,
        "MultiVectorEncoder.encode, 12-word texts",
        rows,
        "texts",
    )
