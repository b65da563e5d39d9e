"""What the worker needs of a model: the ``Encoder`` protocol, which the real encoder and the stand-ins meet."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np


class Encoder(Protocol):
    """A model as the worker uses it (``worker.models.encoder.SentenceTransformerEncoder`` is the real one)."""

    device: str
    dimension: int
    special_token_count: int
    #: the model's prompts by name, and the one it applies by default
    prompts: dict[str, str]
    default_prompt_name: str | None
    #: whether the model's output is unit length (it ends in a Normalize module, which ``encode`` leaves out)
    normalizes: bool

    def describe(self) -> dict[str, Any]: ...

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]: ...

    def prompt_length(self, prompt: str) -> int: ...

    def prepare(self, ids: list[int], *, truncate: bool, param: str) -> list[int]: ...

    def check_token_ids(self, sequences: Sequence[Sequence[int]]) -> None: ...

    def encode(self, batch: Sequence[list[int]], prompt_length: int = 0) -> np.ndarray: ...
