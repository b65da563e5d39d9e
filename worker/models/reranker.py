"""A sentence-transformers ``CrossEncoder`` behind the interface the batcher needs: (query, document) pairs in, one
logit row per pair out, exactly as ``CrossEncoder.predict`` computes them.

A request's pairs are tokenized when it arrives, by the model's own ``preprocess`` (its prompt, longest-first
truncation at its maximum length, its token type ids), unpadded; a batch re-pads the pairs of many requests the way
the tokenizer pads (its side, its pad ids), so a pair's scores do not depend on the pairs it was batched with beyond
float noise. The model's ``activation_fn`` is applied to a request's logits afterwards (``scores``), not in the
batch, so a client may ask for the raw logits.

A plain classifier (one ``Transformer`` module whose task is sequence classification, the usual cross-encoder) may
run its forward pass on another runtime (``forward``, ``worker.models.runtimes``): padded token features in,
logits out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from sentence_transformers import CrossEncoder

from shared.errors import ErrorKind, ServiceError
from worker.models.encoder import CollatedBatch, tokenizer_of
from worker.models.precision import Precision
from worker.models.runtimes import Forward
from worker.models.token_features import Padding, Tokens
from worker.models.transfers import copies_for

#: what preprocess returns besides the per-token lists; the same for every text pair
_TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids")


class PairTokens(Tokens):
    """One (query, document) pair as model input: its per-token features, unpadded."""

    __slots__ = ()


class CrossEncoderReranker:
    kind: Literal["reranker"] = "reranker"

    def __init__(
        self,
        model: CrossEncoder,
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
        self._forward = forward
        self.backend = backend
        self.device = str(model.device)
        self._copies = copies_for(model.device)
        self.precision: Precision = precision
        self.max_seq_length = max_seq_length
        self.num_labels: int = model.num_labels
        self._activation: Callable[[torch.Tensor], torch.Tensor] = model.activation_fn or torch.nn.Identity()
        self.prompts: dict[str, str] = {name: prompt or "" for name, prompt in model.prompts.items()}
        self.default_prompt_name: str | None = model.default_prompt_name
        self._padding = Padding(tokenizer)
        probe = self._preprocess([("probe", "probe")], truncate=True)
        unknown = [key for key, value in probe.items() if key not in _TOKEN_KEYS and not isinstance(value, str)]
        if unknown or "input_ids" not in probe:
            raise ServiceError(ErrorKind.MODEL_NOT_FOUND, "this reranker's inputs are not supported", "model")
        #: features that are not per token (such as ``modality``), passed on to every batch as they are
        self._constants = {key: value for key, value in probe.items() if key not in _TOKEN_KEYS}
        #: the per-token features of a pair, in the order an exported graph takes them
        self.inputs = tuple(key for key in _TOKEN_KEYS if key in probe)
        if forward is not None and not self.exportable:
            raise ValueError("only a single-module sequence classifier can run on another runtime")

    @property
    def exportable(self) -> bool:
        """Whether the model is one Transformer classifying sequences, whose logits a graph can compute alone."""
        modules = list(self._model)
        return len(modules) == 1 and getattr(modules[0], "transformer_task", None) == "sequence-classification"

    @property
    def classifier(self) -> torch.nn.Module:
        """The Hugging Face model inside the Transformer module: what an export runs."""
        classifier = getattr(self._model[0], "auto_model", None)
        if not isinstance(classifier, torch.nn.Module):
            raise TypeError(f"the first module holds no torch model but {type(classifier).__name__}")
        return classifier

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "max_tokens": self.max_seq_length,
            "labels": self.num_labels,
            "activation": _qualified_name(self._activation),
            "prompt_names": list(self.prompts),
            "default_prompt_name": self.default_prompt_name,
            "backend": self.backend,
            "dtype": self.precision,
        }

    @property
    def default_prompt(self) -> str:
        """The prompt ``CrossEncoder.predict`` applies when given none: the default prompt's, if the model has one."""
        if self.default_prompt_name is None:
            return ""
        return self.prompts.get(self.default_prompt_name, "")

    def pairs(
        self, query: str, documents: Sequence[str], *, truncate: bool, max_tokens_per_doc: int | None = None
    ) -> list[PairTokens]:
        """Model inputs for (query, document) for every document. ``truncate``: cut pairs longer than the model
        reads, longest first, as ``CrossEncoder.predict`` does; else refuse them. ``max_tokens_per_doc``: first
        cut each document to that many of its own tokens."""
        if max_tokens_per_doc is not None:
            documents = [first_tokens(self._tokenizer, document, max_tokens_per_doc) for document in documents]
        features = self._preprocess([(query, document) for document in documents], truncate=truncate)
        keys = [key for key in _TOKEN_KEYS if key in features]
        pairs = [PairTokens({key: features[key][row] for key in keys}) for row in range(len(documents))]
        if not truncate:
            for index, pair in enumerate(pairs):
                if len(pair) > self.max_seq_length:
                    raise ServiceError(
                        ErrorKind.INPUT_TOO_LONG,
                        f"the query with document {index} has {len(pair)} tokens; this model reads at most "
                        f"{self.max_seq_length} (send truncate=true to cut it)",
                        "texts",
                    )
        return pairs

    def encode(self, batch: Sequence[PairTokens], group: int = 0) -> np.ndarray:
        """The model's logits, one row of ``num_labels`` per pair: before ``activation_fn``."""
        return self.run(self.collate(batch, group))

    def collate(self, batch: Sequence[PairTokens], group: int = 0) -> CollatedBatch:
        """``encode``'s host half: the pairs padded as the tokenizer pads, on their way to the device."""
        arrays = self._padding.pad(batch, self.inputs)
        if self._forward is not None:  # another runtime takes the arrays themselves
            return CollatedBatch(arrays, {}, None)
        tensors, ready = self._copies.to_device(arrays)
        return CollatedBatch(arrays, tensors, ready)

    def run(self, collated: CollatedBatch) -> np.ndarray:
        """``encode``'s device half: the forward pass of a collated batch, its logits back on the host."""
        rows = len(next(iter(collated.arrays.values())))
        if self._forward is not None:
            logits: np.ndarray = self._forward(*collated.arrays.values())
            return logits.astype(np.float32, copy=False).reshape(rows, -1)
        self._copies.wait(collated.tensors, collated.ready)
        features: dict[str, Any] = {**self._constants, **collated.tensors}
        try:
            with torch.inference_mode():
                scores = self._model(features)["scores"]
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # so the smaller retries the batcher makes can fit
            raise
        return self._copies.to_host(scores.float().reshape(rows, -1))

    def scores(self, logits: np.ndarray, *, raw: bool = False) -> np.ndarray:
        """What ``CrossEncoder.predict`` answers for these logits: the model's activation applied (``raw``: not),
        one score per pair for a one-label model, a row of scores per pair otherwise."""
        scores = logits if raw else self._activation(torch.from_numpy(logits)).numpy()
        return scores[:, 0] if self.num_labels == 1 else scores

    def _preprocess(self, pairs: list[tuple[str, str]], *, truncate: bool) -> dict[str, Any]:
        text: dict[str, Any] = {"padding": False}
        if not truncate:
            text["truncation"] = False
        features: dict[str, Any] = self._model.preprocess(
            pairs,
            prompt=self.default_prompt or None,
            processing_kwargs={"text": text, "common": {"return_tensors": None}},
        )
        return features


def _qualified_name(function: Any) -> str:
    cls = type(function)
    return f"{cls.__module__}.{cls.__qualname__}"


def first_tokens(tokenizer: Any, text: str, count: int) -> str:
    """``text`` up to the end of its ``count``-th token by ``tokenizer`` (a rerank's ``max_tokens_per_doc``)."""
    if not getattr(tokenizer, "is_fast", False):  # only fast tokenizers map tokens to offsets
        ids = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        return text if len(ids) <= count else str(tokenizer.decode(ids[:count]))
    encoded = tokenizer(text, add_special_tokens=False, truncation=False, return_offsets_mapping=True, verbose=False)
    offsets = encoded["offset_mapping"]
    return text if len(offsets) <= count else text[: offsets[count - 1][1]]
