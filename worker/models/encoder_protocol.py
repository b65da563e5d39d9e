"""What the worker needs of a model: the ``Encoder`` protocol for embedding models, which the real encoder and the
stand-ins meet, the ``Reranker`` protocol for cross-encoders and the ``SparseModel`` protocol for sparse models.
``kind`` tells them apart.

``encode`` is all a model must have. A model whose class also splits it into ``collate(batch, group)`` and
``run(collated)`` (``worker.batcher.Stages``: the real encoder and reranker do) has its next batch collated while
the current one runs on a GPU; ``run(collate(batch, group))`` must equal ``encode(batch, group)``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

if TYPE_CHECKING:
    from PIL.Image import Image

    from worker.models.encoder import ImageInput
    from worker.models.multivector_encoder import TokenFeatures
    from worker.models.reranker import PairTokens
    from worker.models.sparse_encoder import SparseTokens


class Encoder(Protocol):
    """An embedding model as the worker uses it (``worker.models.encoder.SentenceTransformerEncoder`` is the real
    one)."""

    kind: Literal["embedding"]
    device: str
    dimension: int
    special_token_count: int
    #: the model's prompts by name, and the one it applies by default
    prompts: dict[str, str]
    default_prompt_name: str | None
    #: whether the model's output is unit length (it ends in a Normalize module, which ``encode`` leaves out)
    normalizes: bool
    #: what it takes: ``("text",)``, or ``("text", "image")`` for a CLIP-style model
    modalities: tuple[str, ...]
    #: what one image costs in a batch's token budget (and in ``usage``); 0 for a text model
    image_tokens: int

    def describe(self) -> dict[str, Any]: ...

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]: ...

    def image_inputs(self, images: Sequence[Image], *, model: str | None = None) -> list[ImageInput]: ...

    def prompt_length(self, prompt: str) -> int: ...

    def prepare(self, ids: list[int], *, truncate: bool, param: str) -> list[int]: ...

    def check_token_ids(self, sequences: Sequence[Sequence[int]]) -> None: ...

    def encode(self, batch: Sequence[list[int]], prompt_length: int = 0) -> np.ndarray: ...


class Reranker(Protocol):
    """A cross-encoder as the worker uses it (``worker.models.reranker.CrossEncoderReranker``)."""

    kind: Literal["reranker"]
    device: str
    #: scores per pair; ranking needs one
    num_labels: int

    def describe(self) -> dict[str, Any]: ...

    def pairs(
        self, query: str, documents: Sequence[str], *, truncate: bool, max_tokens_per_doc: int | None = None
    ) -> list[PairTokens]: ...

    def encode(self, batch: Sequence[PairTokens], group: int = 0) -> np.ndarray: ...

    def scores(self, logits: np.ndarray, *, raw: bool = False) -> np.ndarray: ...


class MultiVector(Protocol):
    """A multi-vector (ColBERT-style) model as the worker uses it
    (``worker.models.multivector_encoder.MultiVectorTokenEncoder``): one vector per token of each text."""

    kind: Literal["multivector"]
    device: str
    dimension: int
    prompts: dict[str, str]
    default_prompt_name: str | None

    def describe(self) -> dict[str, Any]: ...

    def texts(self, texts: Sequence[str], *, prompt: str, task: str | None, truncate: bool) -> list[TokenFeatures]: ...

    def encode(self, batch: Sequence[TokenFeatures], group: int = 0) -> np.ndarray: ...

    def similarity(self, query: np.ndarray, documents: Sequence[np.ndarray]) -> np.ndarray: ...

    def first_tokens(self, text: str, count: int) -> str: ...


class SparseModel(Protocol):
    """A sparse model, SPLADE or inference-free SPLADE, as the worker uses it
    (``worker.models.sparse_encoder.SparseEncoderModel``): one vocabulary-wide row per text."""

    kind: Literal["sparse"]
    device: str
    #: the vocabulary's size: the width of each row
    dimension: int
    #: the most nonzero values a row keeps (None: all); what a job reserves room for per input
    max_active_dims: int | None
    prompts: dict[str, str]
    default_prompt_name: str | None

    def describe(self) -> dict[str, Any]: ...

    def group(self, task: str | None) -> int: ...

    def sequences(
        self, texts: Sequence[str], *, prompt: str, task: str | None, truncate: bool
    ) -> list[SparseTokens]: ...

    def special_tokens(self, task: str | None) -> int: ...

    def encode(self, batch: Sequence[SparseTokens], group: int = 0) -> np.ndarray: ...


Model = Encoder | Reranker | SparseModel | MultiVector
