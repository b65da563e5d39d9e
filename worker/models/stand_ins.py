"""Stand-in encoders for measuring the pipeline without a model (``ENCODER=stub``) and for simulating a GPU
(``ENCODER=simulated``: each batch sleeps, releasing the GIL, for a time proportional to its tokens).

Both return the same constant unit vectors, so everything but the model's arithmetic is real.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from shared.errors import ErrorKind, ServiceError

DIMENSION = 384
MAX_SEQ_LENGTH = 256
VOCAB_SIZE = 30522


class StubEncoder:
    kind: Literal["embedding"] = "embedding"
    device = "stub"
    dimension = DIMENSION
    special_token_count = 2
    normalizes = True
    default_prompt_name: str | None = None
    modalities: tuple[str, ...] = ("text",)
    image_tokens = 0

    def __init__(self) -> None:
        self._vector = np.full(DIMENSION, 1 / np.sqrt(DIMENSION), dtype=np.float32)
        self.prompts: dict[str, str] = {"query": "", "document": ""}

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "dimensions": DIMENSION,
            "max_tokens": MAX_SEQ_LENGTH,
            "prompt_names": list(self.prompts),
        }

    def prompt_length(self, prompt: str) -> int:
        return 0

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return [[1000] * max(1, text.count(" ") + 1) for text in texts]

    def image_inputs(self, images: Sequence[Any], *, model: str | None = None) -> list[Any]:
        raise ServiceError(ErrorKind.INVALID_REQUEST, "this model takes text only", "input")

    def prepare(self, ids: list[int], *, truncate: bool, param: str) -> list[int]:
        room = MAX_SEQ_LENGTH - self.special_token_count
        if len(ids) > room and not truncate:
            raise ServiceError(ErrorKind.INPUT_TOO_LONG, f"an input is longer than {MAX_SEQ_LENGTH} tokens", param)
        return [101, *ids[:room], 102]

    def check_token_ids(self, sequences: Sequence[Sequence[int]]) -> None:
        if any(not 0 <= token < VOCAB_SIZE for sequence in sequences for token in sequence):
            raise ServiceError(ErrorKind.INVALID_REQUEST, "a token id is outside the vocabulary", "input")

    def encode(self, batch: Sequence[list[int]], prompt_length: int = 0) -> np.ndarray:
        return np.broadcast_to(self._vector, (len(batch), DIMENSION))


class SimulatedGpuEncoder(StubEncoder):
    device = "simulated-gpu"

    def __init__(self, batch_ms: float, ms_per_1k_tokens: float) -> None:
        super().__init__()
        self._batch_s = batch_ms / 1000
        self._s_per_token = ms_per_1k_tokens / 1_000_000

    def encode(self, batch: Sequence[list[int]], prompt_length: int = 0) -> np.ndarray:
        padded_tokens = len(batch) * max(len(ids) for ids in batch)
        time.sleep(self._batch_s + padded_tokens * self._s_per_token)
        return super().encode(batch)
