"""Per-token model input, kept unpadded until a batch is formed, and padded then as the model's tokenizer pads: what
the cross-encoder (``reranker``), the sparse model and the multi-vector model share. Each tokenizes with the model's
own ``preprocess`` when a request arrives; its rows wait unpadded in the micro-batcher, whose budget counts their
tokens (``len``); ``Padding.pad`` makes a batch of them the arrays ``preprocess`` would have made."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np


class Tokens:
    """One text (or text pair) as model input: its per-token features, unpadded. Its length is its tokens'."""

    __slots__ = ("features",)

    def __init__(self, features: dict[str, list[int]]) -> None:
        self.features = features

    def __len__(self) -> int:
        return len(self.features["input_ids"])


class Padding:
    """How a tokenizer pads a batch: on its ``padding_side``, each per-token feature with its pad value
    (``extra``: the pad values of features the tokenizer does not make)."""

    def __init__(self, tokenizer: Any, **extra: int) -> None:
        self.left = getattr(tokenizer, "padding_side", "right") == "left"
        self.values = {
            "input_ids": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
            "attention_mask": 0,
            "token_type_ids": getattr(tokenizer, "pad_token_type_id", 0),
            **extra,
        }

    def pad(
        self, batch: Sequence[Tokens], keys: Iterable[str], dtypes: Mapping[str, type[Any]] | None = None
    ) -> dict[str, np.ndarray]:
        """The ``keys`` features of ``batch``, padded to its longest row, as int64 arrays (or ``dtypes[key]``)."""
        width = max(map(len, batch))
        arrays = {}
        for key in keys:
            dtype = (dtypes or {}).get(key, np.int64)
            padded: np.ndarray = np.full((len(batch), width), self.values[key], dtype=dtype)
            for row, tokens in enumerate(batch):
                values = tokens.features[key]
                if self.left:
                    padded[row, width - len(values) :] = values
                else:
                    padded[row, : len(values)] = values
            arrays[key] = padded
        return arrays
