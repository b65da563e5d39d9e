"""A sentence-transformers ``MultiVectorEncoder`` (ColBERT-style late interaction) behind the interface the batcher
needs: texts in, one (tokens, dimensions) float32 array per text out, exactly as ``encode`` / ``encode_query`` /
``encode_document`` return them.

What the library does, and how it is kept:

- **Tokens.** A request's texts are tokenized when it arrives by the model's own ``preprocess`` (its prompt put
  before each text, the task's maximum length: ``document_length`` for documents, the tokenizer's otherwise; for
  queries the query expansion: padded to the expansion length and the padding swapped for ``[MASK]``, attended or
  not as the model's ``query_expansion`` says). Each text keeps its real tokens and its expansion positions; the
  rest (padding to the request's longest text) is dropped, and a batch re-pads the texts of many requests the way
  the tokenizer pads, with the expansion positions kept marked (``query_expansion_positions``).
- **Forward.** Every module of the model runs on the batch, called as the library calls it (``model(features,
  task=task)``): the transformer, the projection (``Dense``), the scoring mask (``MultiVectorMask``: real tokens
  plus, for queries, the expansion positions; for documents the skiplist's tokens, such as punctuation, left out)
  and the token-level ``Normalize``. A text's vectors are its rows the scoring mask keeps, then the model's
  ``truncate_dim`` cut (and re-normalized) as ``encode`` does.
- **Task.** Queries, documents and neither (``encode``) are tokenized and masked differently, so the batch group
  says which (``TASKS``): only texts of one task share a forward pass.

Runs in torch, float32 (see ``worker.models.source``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from sentence_transformers import MultiVectorEncoder

from shared.errors import ErrorKind, ServiceError
from shared.settings import Settings
from worker.models.encoder import tokenizer_of
from worker.models.precision import declared_precision, pin_float32_math
from worker.models.reranker import first_tokens
from worker.models.runtime_choice import runtime_threads
from worker.models.token_features import Padding, Tokens
from worker.models.transfers import copies_for

#: the tasks a text is encoded for, by batch group: ``encode`` (none), ``encode_query``, ``encode_document``
TASKS: tuple[str | None, ...] = (None, "query", "document")
#: the per-token features ``preprocess`` gives that a batch re-pads
_TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids", "query_expansion_positions")


class TokenFeatures(Tokens):
    """One text as a multi-vector model's input: its per-token features, unpadded. Its length is its tokens'
    (expansion included)."""

    __slots__ = ("real_tokens",)

    def __init__(self, features: dict[str, list[int]], real_tokens: int) -> None:
        super().__init__(features)
        #: the tokens the text itself became, special tokens and prompt included, expansion not
        self.real_tokens = real_tokens


def task_group(task: str | None) -> int:
    return TASKS.index(task)


def resolve_prompt(
    prompts: Mapping[str, str], default_prompt_name: str | None, prompt_name: str | None, task: str | None
) -> str:
    """The prompt ``encode`` (task None), ``encode_query`` or ``encode_document`` puts before each text: an explicit
    ``prompt_name``; else the task's own (``query``; the first of ``document``, ``passage``, ``corpus``); else the
    model's default prompt. An unknown ``prompt_name`` is a 400 that lists the model's."""
    if prompt_name is None:
        candidates = {"query": ("query",), "document": ("document", "passage", "corpus")}.get(task or "", ())
        prompt_name = next((name for name in candidates if name in prompts), None)
    if prompt_name is not None:
        if prompt_name not in prompts:
            names = ", ".join(repr(key) for key in prompts) or "none"
            raise ServiceError(
                ErrorKind.INVALID_REQUEST,
                f"this model has no prompt named {prompt_name!r}; its prompts: {names}",
                "prompt_name",
            )
        return prompts[prompt_name] or ""
    if default_prompt_name is not None:
        return prompts.get(default_prompt_name) or ""
    return ""


@dataclasses.dataclass(frozen=True, slots=True)
class CollatedTokens:
    """A batch ready for ``run``: its padded features on the model's device, its task."""

    tensors: dict[str, torch.Tensor]
    ready: Any
    task: str | None


class MultiVectorTokenEncoder:
    kind: Literal["multivector"] = "multivector"

    def __init__(self, model: MultiVectorEncoder) -> None:
        tokenizer, max_seq_length = tokenizer_of(model)  # type: ignore[arg-type]
        self._model = model
        self._tokenizer = tokenizer
        self.backend = "torch"
        self.device = str(model.device)
        self._copies = copies_for(model.device)
        self.max_seq_length: int = max_seq_length
        self.dimension: int = int(model.get_embedding_dimension() or 0)
        self.truncate_dim: int | None = model.truncate_dim
        self.prompts: dict[str, str] = {name: prompt or "" for name, prompt in model.prompts.items()}
        self.default_prompt_name: str | None = model.default_prompt_name
        self.similarity_fn_name: str = model.similarity_fn_name
        self._padding = Padding(tokenizer, query_expansion_positions=0)
        transformer = model[0]
        self._document_length: int | None = getattr(transformer, "document_length", None)
        self._query_length: int | None = getattr(transformer, "query_length", None)
        self.query_expansion: dict[str, Any] | None = getattr(transformer, "query_expansion", None)
        probe = model.preprocess(["probe"], task="query")
        unknown = [key for key, value in probe.items() if key not in _TOKEN_KEYS and not _constant(key, value)]
        if unknown or "input_ids" not in probe or "attention_mask" not in probe:
            raise ServiceError(ErrorKind.MODEL_NOT_FOUND, "this multi-vector model's inputs are not supported", "model")
        #: per-token features of a text, and their dtypes
        self._dtypes = {key: value.dtype for key, value in probe.items() if key in _TOKEN_KEYS}
        #: features that are not per token (``modality``), passed on to every batch as they are
        self._constants = {key: value for key, value in probe.items() if key == "modality"}
        # eval mode (no dropout), as ``encode`` sets it
        model.eval()

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "dimensions": self.dimension,
            "max_tokens": self.max_seq_length,
            "query_tokens": None if self.query_expansion is None else self.query_expansion["length"],
            "similarity": self.similarity_fn_name,
            "prompt_names": list(self.prompts),
            "default_prompt_name": self.default_prompt_name,
            "backend": self.backend,
            "dtype": "float32",
        }

    def limit(self, task: str | None) -> int:
        """The most tokens a text of ``task`` is read to, special tokens and prompt included."""
        if task == "query" and self.query_expansion is not None:
            if self.query_expansion["strategy"] == "fixed":
                return int(self.query_expansion["length"])
            return max(self._query_length or self.max_seq_length, int(self.query_expansion["length"]))
        if task == "query" and self._query_length is not None:
            return self._query_length
        if task == "document" and self._document_length is not None:
            return self._document_length
        return self.max_seq_length

    def texts(self, texts: Sequence[str], *, prompt: str, task: str | None, truncate: bool) -> list[TokenFeatures]:
        """Model inputs for each text, tokenized by the model's ``preprocess`` for ``task``. ``truncate``: cut a
        text longer than the task reads, as ``encode`` does; else refuse it (400)."""
        if not truncate:
            self._check_lengths(texts, prompt, task)
        features = self._model.preprocess(list(texts), prompt=prompt or None, task=task)
        keep = features["attention_mask"].bool()
        expansion = features.get("query_expansion_positions")
        real = keep.sum(dim=1).tolist()
        if expansion is not None:
            keep = keep | expansion.bool()
            real = (features["attention_mask"].bool() & ~expansion.bool()).sum(dim=1).tolist()
        rows: dict[str, list[list[int]]] = {key: features[key].tolist() for key in self._dtypes if key in features}
        keep_rows: list[list[bool]] = keep.tolist()
        sequences = []
        for row, kept in enumerate(keep_rows):
            positions = [index for index, flag in enumerate(kept) if flag]
            first, last = positions[0], positions[-1] + 1  # contiguous: padding is only on one side
            item = {key: values[row][first:last] for key, values in rows.items()}
            sequences.append(TokenFeatures(item, real[row]))
        return sequences

    def first_tokens(self, text: str, count: int) -> str:
        """``text`` up to the end of its ``count``-th token (a rerank's ``max_tokens_per_doc``)."""
        return first_tokens(self._tokenizer, text, count)

    def _check_lengths(self, texts: Sequence[str], prompt: str, task: str | None) -> None:
        limit = self.limit(task)
        ids = self._tokenizer([prompt + text for text in texts], truncation=False, verbose=False)["input_ids"]
        for index, tokens in enumerate(ids):
            if len(tokens) > limit:
                raise ServiceError(
                    ErrorKind.INPUT_TOO_LONG,
                    f"input {index} has {len(tokens)} tokens; this model reads at most {limit} "
                    f"{'of a query' if task == 'query' else 'of a text'} (send truncate=true to cut it)",
                    "input",
                )

    def encode(self, batch: Sequence[TokenFeatures], group: int = 0) -> np.ndarray:
        """One (tokens, dimensions) float32 array per text, in an object array, as ``encode`` returns them."""
        return self.run(self.collate(batch, group))

    def collate(self, batch: Sequence[TokenFeatures], group: int = 0) -> CollatedTokens:
        """``encode``'s host half: the texts padded as the tokenizer pads, on their way to the device."""
        # a query's expansion positions: only queries have them; booleans stay booleans, as preprocess makes them
        booleans = {key: np.bool_ for key, dtype in self._dtypes.items() if dtype == torch.bool}
        arrays = self._padding.pad(batch, batch[0].features, booleans)
        tensors, ready = self._copies.to_device(arrays)
        return CollatedTokens(tensors, ready, TASKS[group])

    def run(self, collated: CollatedTokens) -> np.ndarray:
        """``encode``'s device half: every module of the model on the batch, each text's scored rows back on the
        host."""
        self._copies.wait(collated.tensors, collated.ready)
        features: dict[str, Any] = {**self._constants, **collated.tensors}
        try:
            with torch.inference_mode():
                features = self._model(features, task=collated.task)
                embeddings = features["token_embeddings"].float()
                masks = features["attention_mask"].bool()
                rows = [embedding[mask] for embedding, mask in zip(embeddings, masks, strict=True)]
                if self.truncate_dim is not None:
                    rows = [torch.nn.functional.normalize(row[..., : self.truncate_dim], p=2, dim=-1) for row in rows]
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # so the smaller retries the batcher makes can fit
            raise
        out = np.empty(len(rows), dtype=object)
        for index, row in enumerate(rows):
            out[index] = row.cpu().numpy().astype(np.float32, copy=False)
        return out

    def similarity(self, query: np.ndarray, documents: Sequence[np.ndarray]) -> np.ndarray:
        """The model's own ``similarity`` (MaxSim, or MeanMaxSim where the model says so) of one query's vectors
        with each document's."""
        scores = self._model.similarity([torch.from_numpy(query)], [torch.from_numpy(doc) for doc in documents])
        result: np.ndarray = scores[0].float().cpu().numpy()
        return result


def _constant(key: str, value: object) -> bool:
    """Features the same for every text of a batch: the modality, and the prompt's length (which no module of a
    multi-vector model reads: ``prompt_length`` is for pooling that leaves a prompt out)."""
    return key in ("modality", "prompt_length") and not isinstance(value, torch.Tensor)


def place_multivector(model: MultiVectorEncoder, name: str, settings: Settings) -> MultiVectorTokenEncoder:
    """The model in float32 on torch, on whatever device it was loaded on.

    Not OpenVINO or ONNX (``worker.models.runtime_choice``): their export and its load-time probe are built for a
    ``SentenceTransformer``'s pooled output and a ``CrossEncoder``'s logits; the multi-vector model's transformer is
    the same graph, but its per-token output, the query expansion's attention mask and the scoring mask have no
    probe yet. A reduced ``DTYPE`` is refused, never approximated."""
    torch.set_num_threads(runtime_threads(settings))
    pin_float32_math()
    model.to(torch.float32)
    precision = declared_precision(settings.dtype, str(model.device)) or "float32"
    if precision != "float32":
        raise ServiceError(
            ErrorKind.MODEL_NOT_FOUND, f"multi-vector model {name!r} is served in float32, not {precision}", "model"
        )
    return MultiVectorTokenEncoder(model)
