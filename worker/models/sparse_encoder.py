"""A sentence-transformers ``SparseEncoder`` (SPLADE, inference-free SPLADE) behind the interface the batcher needs:
tokenized texts in, one vocabulary-wide row per text out, exactly as ``encode`` / ``encode_query`` /
``encode_document`` compute them.

- **Tokens.** A request's texts are tokenized when it arrives, by the model's own ``preprocess`` with its task
  (``"query"``, ``"document"`` or none), so a ``Router`` (inference-free SPLADE) picks the same route, tokenizer
  settings (special tokens or not) and truncation as the library. The rows come back unpadded (``SparseTokens``);
  a batch re-pads them the way the tokenizer pads.
- **Batches.** Only texts of one task share a forward pass when the model routes by task (``group``); a model
  without a ``Router`` computes the same whatever the task, so all its texts share batches.
- **Forward.** The model's own modules run on the collated features (``SparseEncoder.forward``, with the task and
  ``max_active_dims`` as ``encode`` passes them), then ``select_max_active_dims`` keeps the top
  ``max_active_dims`` values, as ``encode`` does after each batch.
- **Runtime.** torch, float32, on any device: the vocabulary-wide MLM logits are most of the work and of the
  memory, and the export path (``worker.models.runtimes``) exports hidden-state graphs, not a fill-mask head or a
  router; nothing is exported for sparse models.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from sentence_transformers import SparseEncoder
from sentence_transformers.base.modules import Router
from sentence_transformers.util import select_max_active_dims

from shared.errors import ErrorKind, ServiceError
from shared.settings import Settings
from worker.models.precision import Precision, pin_float32_math
from worker.models.runtime_choice import runtime_threads
from worker.models.token_features import Padding, Tokens
from worker.models.transfers import copies_for

#: the tasks a sparse request may ask for, by batch group: none (``encode``), ``encode_query``, ``encode_document``
TASKS: tuple[str | None, ...] = (None, "query", "document")
#: per-token features a tokenizer may give; anything else per token is refused at load
_TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids")
_PROBE = "probe"
#: nonzero values a job reserves room for per input when the model sets no ``max_active_dims``: SPLADE documents
#: have 100 to 300, queries fewer; a chunk that stores more than its share is still stored while Redis has room
ASSUMED_ACTIVE_DIMS = 512


class SparseTokens(Tokens):
    """One text as a sparse model's input: its per-token features, unpadded."""

    __slots__ = ()


class SparseEncoderModel:
    kind: Literal["sparse"] = "sparse"

    def __init__(self, model: SparseEncoder) -> None:
        tokenizer = model.tokenizer
        if tokenizer is None:
            raise ServiceError(ErrorKind.MODEL_NOT_FOUND, "this model has no tokenizer; only text models are served")
        self._model = model
        self._tokenizer = tokenizer
        self.device = str(model.device)
        self._copies = copies_for(model.device)
        self.backend = "torch"
        self.precision: Precision = "float32"
        self.routed = any(isinstance(module, Router) for module in model)
        self.max_seq_length = int(model.max_seq_length or tokenizer.model_max_length)
        self.max_active_dims: int | None = model.max_active_dims
        self.prompts: dict[str, str] = {name: prompt or "" for name, prompt in model.prompts.items()}
        self.default_prompt_name: str | None = model.default_prompt_name
        self._padding = Padding(tokenizer)
        bare = len(tokenizer(_PROBE, add_special_tokens=False)["input_ids"])
        #: per task: the features that are not per token (``task``, ``modality``), the per-token keys, and how
        #: many special tokens the route adds to a text
        self._routes: dict[str | None, tuple[dict[str, Any], tuple[str, ...], int]] = {}
        for task in TASKS if self.routed else (None,):
            probe = self._preprocess([_PROBE], task)
            tensors = {key: value for key, value in probe.items() if isinstance(value, torch.Tensor)}
            if "input_ids" not in tensors or any(key not in _TOKEN_KEYS for key in tensors):
                raise ServiceError(ErrorKind.MODEL_NOT_FOUND, "this sparse model's inputs are not supported", "model")
            constants = {key: value for key, value in probe.items() if key not in tensors}
            keys = tuple(key for key in _TOKEN_KEYS if key in tensors)
            self._routes[task] = (constants, keys, int(tensors["attention_mask"].sum()) - bare)
        #: the rows' width (the vocabulary's size for SPLADE), measured: a pooling saved before it ever ran does not
        #: know it, and ``get_embedding_dimension`` then answers the transformer's hidden size
        self.dimension = int(self.encode(self.sequences([_PROBE], prompt="", task=None, truncate=True)).shape[1])

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "dimensions": self.dimension,
            "max_tokens": self.max_seq_length,
            "max_active_dims": self.max_active_dims,
            "stored_values": self.stored_values,
            "prompt_names": list(self.prompts),
            "default_prompt_name": self.default_prompt_name,
            "routed": self.routed,
            "backend": self.backend,
            "dtype": self.precision,
        }

    @property
    def stored_values(self) -> int:
        """What a job reserves per input, in 4-byte values: a stored row is its count, then an index and a value per
        nonzero (``shared.sparse``), at most ``max_active_dims`` of them, else assumed ``ASSUMED_ACTIVE_DIMS``."""
        active = self.max_active_dims or min(ASSUMED_ACTIVE_DIMS, self.dimension)
        return 1 + 2 * active

    def group(self, task: str | None) -> int:
        """The batch group of texts of ``task``: one per task for a model that routes by task, else 0."""
        return TASKS.index(task) if self.routed else 0

    def sequences(self, texts: Sequence[str], *, prompt: str, task: str | None, truncate: bool) -> list[SparseTokens]:
        """Model inputs for ``texts`` with ``prompt`` before each, tokenized as ``encode`` does for ``task`` (its
        route's tokenizer settings, cut at its maximum length). ``truncate`` false: a text that was cut is a 400."""
        route = task if self.routed else None
        features = self._preprocess(list(texts), route, prompt)
        _, keys, special = self._routes[route]
        masks = features["attention_mask"].numpy().astype(bool)
        columns = {key: features[key].numpy() for key in keys}
        rows = [
            SparseTokens({key: columns[key][row][masks[row]].tolist() for key in keys}) for row in range(len(texts))
        ]
        if not truncate:
            whole = self._tokenizer(
                [prompt + text for text in texts], add_special_tokens=False, truncation=False, verbose=False
            )["input_ids"]
            for index, (ids, tokens) in enumerate(zip(whole, rows, strict=True)):
                if len(ids) + special > len(tokens):
                    raise ServiceError(
                        ErrorKind.INPUT_TOO_LONG,
                        f"input {index} has {len(ids) + special} tokens; this model reads at most "
                        f"{len(tokens)} (send truncate=true to cut it)",
                        "input",
                    )
        return rows

    def special_tokens(self, task: str | None) -> int:
        """Special tokens the route of ``task`` adds to each text (left out of ``usage``)."""
        return self._routes[task if self.routed else None][2]

    def longest_input(self) -> SparseTokens:
        """A text at the model's maximum length (the GPU memory probe's input)."""
        return self.sequences([(_PROBE + " ") * self.max_seq_length], prompt="", task=None, truncate=True)[0]

    def encode(self, batch: Sequence[SparseTokens], group: int = 0) -> np.ndarray:
        """One float32 row of ``dimensions`` per text, zero outside its active dimensions."""
        return self.run(self.collate(batch, group))

    def collate(self, batch: Sequence[SparseTokens], group: int = 0) -> SparseBatch:
        """``encode``'s host half: the texts padded as the tokenizer pads, on their way to the device."""
        _, keys, _ = self._routes[TASKS[group]]
        arrays = self._padding.pad(batch, keys)
        tensors, ready = self._copies.to_device(arrays)
        return SparseBatch(tensors, ready, TASKS[group])

    def run(self, collated: SparseBatch) -> np.ndarray:
        """``encode``'s device half: the model's modules on a collated batch, the top ``max_active_dims`` kept."""
        task = collated.task
        constants, _, _ = self._routes[task]
        self._copies.wait(collated.tensors, collated.ready)
        features: dict[str, Any] = {**constants, **collated.tensors}
        kwargs: dict[str, Any] = {}
        if task is not None:
            kwargs["task"] = task
        if self.max_active_dims is not None:
            kwargs["max_active_dims"] = self.max_active_dims
        try:
            with torch.inference_mode():
                embeddings = self._model(features, **kwargs)["sentence_embedding"]
                if self.max_active_dims is not None:
                    embeddings = select_max_active_dims(embeddings, max_active_dims=self.max_active_dims)
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # so the smaller retries the batcher makes can fit
            raise
        return self._copies.to_host(embeddings.float())

    def _preprocess(self, texts: list[str], task: str | None, prompt: str = "") -> dict[str, Any]:
        kwargs: dict[str, Any] = {} if task is None else {"task": task}
        features: dict[str, Any] = self._model.preprocess(texts, prompt=prompt or None, **kwargs)
        return features


@dataclasses.dataclass(frozen=True, slots=True)
class SparseBatch:
    """A batch ready for ``run``: its tensors on the model's device, what the copy's end is known by
    (``transfers.Copies.wait``), and the task its texts were tokenized for."""

    tensors: dict[str, torch.Tensor]
    ready: Any
    task: str | None


def place_sparse(model: SparseEncoder, settings: Settings) -> SparseEncoderModel:
    """A sparse model on torch in float32, on the device it was loaded on (module docstring: why)."""
    torch.set_num_threads(runtime_threads(settings))
    pin_float32_math()
    model.to(torch.float32)
    return SparseEncoderModel(model)
