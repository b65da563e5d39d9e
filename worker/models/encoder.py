"""A sentence-transformers model behind the narrow interface the batcher needs: token ids in, vectors out.

Texts are tokenized once, when a job arrives (while the model is busy with the previous batch); a batch is then
just padded token ids, whether the client sent texts or token ids. The vectors are the model's own output up to a
trailing ``Normalize`` module, which is left to the service (``normalizes`` says whether the model has one), so a
request may ask for raw or unit vectors from any model and ``dimensions`` cuts before normalizing.

``encode`` is two halves the batcher may call apart, so the host prepares batch N+1 while the GPU runs batch N:
``collate`` (padding, and on a GPU the pinned, ``non_blocking`` copy to the device: ``worker.models.transfers``) and
``run`` (the forward pass and the copy back). On the CPU they are the same code as one ``encode``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from sentence_transformers import CrossEncoder, SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, Transformer

from shared.errors import ErrorKind, ServiceError
from worker.models.precision import TORCH_DTYPES, Precision
from worker.models.runtimes import Forward
from worker.models.transfers import copies_for

log = logging.getLogger(__name__)

_PROBE_TEXT = "probe"


class SentenceTransformerEncoder:
    """``forward``: the transformer's forward pass on another runtime (``worker.models.runtimes``), named by
    ``backend``; the modules after the transformer run in torch either way. ``precision``: what the model computes
    in; on CPU, torch runs a reduced precision under autocast (the weights stay float32), on a GPU the caller has
    cast the weights already."""

    kind: Literal["embedding"] = "embedding"

    def __init__(
        self,
        model: SentenceTransformer,
        forward: Forward | None = None,
        backend: str = "torch",
        *,
        precision: Precision = "float32",
    ) -> None:
        tokenizer, max_seq_length = tokenizer_of(model)
        self._model = model
        self._tokenizer = tokenizer
        #: the model's own tokenizer, public for ``worker.tokenizing`` (TEI's ``/tokenize`` and ``/decode``)
        self.tokenizer = tokenizer
        modules = list(model)
        self.normalizes = bool(modules) and isinstance(modules[-1], Normalize)
        #: what runs on a batch: every module but a trailing Normalize
        self._modules = modules[:-1] if self.normalizes else modules
        self._forward = forward
        self.backend = backend
        self.precision: Precision = precision
        self._autocast = forward is None and str(model.device) == "cpu" and precision != "float32"
        if forward is not None:
            if not isinstance(modules[0], Transformer):
                raise ValueError("only a model that starts with a Transformer module can run on another runtime")
            self._modules = self._modules[1:]
        #: False when a pooling module leaves the prompt's tokens out (``include_prompt=False``)
        self._pools_prompt = all(getattr(module, "include_prompt", True) for module in modules)
        self.device = str(model.device)
        self.max_seq_length = max_seq_length
        self.vocab_size: int = len(tokenizer)
        self.dimension: int = int(model.get_embedding_dimension() or 0)
        self.prompts: dict[str, str] = {name: prompt or "" for name, prompt in model.prompts.items()}
        self.default_prompt_name: str | None = model.default_prompt_name
        self._pad_id: int = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._prefix, self._suffix = _special_tokens(tokenizer)
        self.special_token_count = len(self._prefix) + len(self._suffix)
        self._copies = copies_for(model.device)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "dimensions": self.dimension,
            "max_tokens": self.max_seq_length,
            "prompt_names": list(self.prompts),
            "default_prompt_name": self.default_prompt_name,
            "normalized": self.normalizes,
            "backend": self.backend,
            "dtype": self.precision,
            "attention": getattr(self, "attention", None),  # set by runtime_choice.place
        }

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens and without truncation."""
        ids: list[list[int]] = self._tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)[
            "input_ids"
        ]
        return ids

    def prompt_length(self, prompt: str) -> int:
        """How many leading tokens the pooling must leave out for ``prompt``: 0 when the pooling reads them.

        Measured as sentence-transformers does: the prompt tokenized with special tokens, less a trailing one.
        """
        if not prompt or self._pools_prompt:
            return 0
        ids: list[int] = self._tokenizer(prompt)["input_ids"]
        special = set(getattr(self._tokenizer, "all_special_ids", ()))
        return len(ids) - 1 if ids and ids[-1] in special else len(ids)

    def prepare(self, ids: list[int], *, truncate: bool, param: str) -> list[int]:
        """Model input for one sequence: special tokens added, cut to the model's maximum length."""
        room = self.max_seq_length - self.special_token_count
        if len(ids) > room:
            if not truncate:
                raise ServiceError(
                    ErrorKind.INPUT_TOO_LONG,
                    f"an input has {len(ids) + self.special_token_count} tokens; this model reads at "
                    f"most {self.max_seq_length} (send truncate=true to cut it)",
                    param,
                )
            ids = ids[:room]
        return self._prefix + ids + self._suffix

    def check_token_ids(self, sequences: Sequence[Sequence[int]]) -> None:
        for sequence in sequences:
            for token in sequence:
                if not 0 <= token < self.vocab_size:
                    raise ServiceError(
                        ErrorKind.INVALID_REQUEST,
                        f"token id {token} is outside this model's vocabulary (0..{self.vocab_size - 1})",
                        "input",
                    )

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts cut to the model's length, encoded as one padded batch, raw (no prompt, no Normalize): what
        the runtime choice and the benchmarks time without the service around the encoder."""
        return self.encode([self.prepare(ids, truncate=True, param="input") for ids in self.tokenize(texts)])

    def encode(self, batch: Sequence[list[int]], prompt_length: int = 0) -> np.ndarray:
        """float32 vectors, one row per sequence of ``batch``, before any trailing Normalize. ``prompt_length``:
        leading tokens of every sequence that the pooling leaves out (see ``prompt_length``)."""
        return self.run(self.collate(batch, prompt_length))

    def collate(self, batch: Sequence[list[int]], prompt_length: int = 0) -> CollatedBatch:
        """``encode``'s first half, the host's part: the batch padded and, on a GPU, on its way to the device."""
        width = max(len(ids) for ids in batch)
        input_ids = np.full((len(batch), width), self._pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
        arrays = {"input_ids": input_ids, "attention_mask": attention_mask}
        tensors, ready = self._copies.to_device(arrays)
        return CollatedBatch(arrays, tensors, ready, prompt_length)

    def run(self, collated: CollatedBatch) -> np.ndarray:
        """``encode``'s second half: the forward pass of a collated batch, and its vectors back on the host."""
        self._copies.wait(collated.tensors, collated.ready)
        features: dict[str, Any] = dict(collated.tensors)
        if self._forward is not None:
            ids, mask = collated.arrays["input_ids"], collated.arrays["attention_mask"]
            features["token_embeddings"] = torch.from_numpy(self._forward(ids, mask))
        if collated.prompt_length:
            features["prompt_length"] = collated.prompt_length
        try:
            with (
                torch.inference_mode(),
                torch.autocast("cpu", dtype=TORCH_DTYPES[self.precision], enabled=self._autocast),
            ):
                for module in self._modules:
                    features = module(features)
                embeddings = features["sentence_embedding"].float()
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # so the smaller retries the batcher makes can fit
            raise
        return self._copies.to_host(embeddings)


@dataclasses.dataclass(frozen=True, slots=True)
class CollatedBatch:
    """A batch ready for ``run``: padded arrays, their tensors on the model's device, what the copy's end is known
    by (``transfers.Copies.wait``), and the prompt length its pooling leaves out."""

    arrays: dict[str, np.ndarray]
    tensors: dict[str, torch.Tensor]
    ready: Any
    prompt_length: int = 0


def tokenizer_of(model: SentenceTransformer | CrossEncoder) -> tuple[Any, int]:
    """The model's tokenizer and maximum length; a ServiceError for a model without them."""
    if model.tokenizer is None or model.max_seq_length is None:
        raise ServiceError(ErrorKind.MODEL_NOT_FOUND, "this model has no tokenizer; only transformer models are served")
    return model.tokenizer, model.max_seq_length


def _special_tokens(tokenizer: object) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after a single sequence ([CLS] ... [SEP], <s> ... </s>, ...)."""
    bare: list[int] = tokenizer(_PROBE_TEXT, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    full: list[int] = tokenizer(_PROBE_TEXT)["input_ids"]  # type: ignore[operator]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    raise ServiceError(ErrorKind.MODEL_NOT_FOUND, "this model's tokenizer is not supported")


def pick_device(preference: str) -> str:
    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return preference
