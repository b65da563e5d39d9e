"""``truncate: "chunk"``: an input longer than the model reads, split into chunks that each fit, each embedded as
its own sequence, and pooled back into one vector per input (vLLM's chunked processing, PR #22280). The rules:

- **When.** An input is split only when its model input would exceed the model's maximum length
  (``max_seq_length``, special tokens included). An input that fits is one chunk: the very sequence ``truncate``
  true or false gives it, and its vector is its row, untouched.
- **Prompt and text tokens.** The pipeline tokenizes a text and its prompt as one string, as sentence-transformers
  does. The prompt alone is tokenized too (no special tokens); when the combined ids start with the prompt's ids,
  the rest are the text's tokens. When they do not (a tokenizer that merges across the boundary), the text is
  tokenized alone. Token-id input is the prompt's ids followed by the ids sent, so it always splits there.
- **Chunks.** Each chunk is the prompt's ids, then a window of the text's tokens, then the model's special tokens
  around both: every chunk is embedded as the same kind of input as the whole would be (and a model whose pooling
  leaves the prompt out keeps its batch group). A window holds ``room = max_seq_length - special tokens - prompt
  tokens`` text tokens; consecutive windows overlap by ``CHUNK_OVERLAP_TOKENS`` text tokens (default 0), the last
  window holds the rest (at least one token no earlier window has). An overlap of ``room`` or more, or a prompt
  that leaves no room, cannot chunk: a 400 (``invalid_request_error``, param ``input``) for a request with an input
  that needs splitting; requests whose inputs all fit are served.
- **Weights.** A chunk's weight is the number of tokens its pooling read: its whole sequence, special tokens
  included, less the leading tokens the pooling leaves out when it leaves the prompt out (the model's
  ``prompt_length`` for the prompt, as sentence-transformers measures it; 0 when the pooling reads the prompt).
- **Pooling back.** An input's vector is the average of its chunks' raw vectors (before the model's ``Normalize``,
  which the encoder leaves out) weighted by the chunks' weights, computed in float64; for mean pooling that is the
  mean over every token read. ``dimensions`` then cuts it and the normalization applies as for any input
  (``worker.pipeline``). For other poolings (CLS, last token) it is the same weighted average of the chunks' vectors.
- **Counting.** Every chunk is a sequence: ``usage.prompt_tokens`` is all chunks' tokens less their special tokens
  (a prompt repeated in each chunk is read each time, so it counts each time), and the per-request token limit
  (``MAX_TOKENS_PER_REQUEST``) holds all chunks' tokens, special tokens included.

- **Defaults.** A job whose request did not say ``truncate`` carries None; the worker applies the deployment's
  default for the model's kind: a dense model chunks where ``CHUNK_LONG_INPUTS`` says so, else cuts or refuses as
  ``TRUNCATE_INPUTS`` says (``truncation``); a sparse model cuts or refuses as ``TRUNCATE_INPUTS`` says
  (``unchunked``).

Only dense embedding models chunk: sparse and multi-vector models refuse an explicit ``"chunk"``
(``refuse_chunking``).
Chunks of one input go to the micro-batcher as separate sequences and may be encoded in different batches.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from shared.errors import ErrorKind, ServiceError
from shared.protocol import Truncation
from shared.settings import get_settings
from worker.models.encoder_protocol import Encoder

#: what a sparse or multi-vector model answers to ``truncate: "chunk"``
NOT_CHUNKED = "chunking is for dense embedding models; send truncate true or false"


def refuse_chunking(truncate: object) -> None:
    """A 400 naming ``truncate`` when a task of a model that does not chunk asks for ``"chunk"``."""
    if truncate == "chunk":
        raise ServiceError(ErrorKind.INVALID_REQUEST, NOT_CHUNKED, "truncate")


def truncation(truncate: Truncation | None) -> Truncation:
    """A dense model's ``truncate``: the request's, or where it did not say (None), the deployment's default:
    ``"chunk"`` with ``CHUNK_LONG_INPUTS``, else ``TRUNCATE_INPUTS``."""
    if truncate is not None:
        return truncate
    settings = get_settings()
    return "chunk" if settings.chunk_long_inputs else settings.truncate_inputs


def unchunked(truncate: Truncation | None) -> bool:
    """``truncate`` for a model that does not chunk (a sparse model on ``/v1/embeddings``): the request's, or where it
    did not say (None), ``TRUNCATE_INPUTS`` (``CHUNK_LONG_INPUTS`` is for dense models); a 400 for ``"chunk"``."""
    if truncate is None:
        return get_settings().truncate_inputs
    refuse_chunking(truncate)
    return bool(truncate)


class Chunked(list[Any]):
    """A request's model inputs when it chunks: every chunk's sequence (special tokens included), input after
    input, and beside them how many chunks each input has and each chunk's weight (the tokens its pooling read).
    A list, so the layout travels with the sequences through the task skeleton (``Tokenized.sequences``) from
    ``EmbeddingPipeline.sequences`` to its ``result``, which pools the rows back. An image of a job of texts and
    images is an input of one chunk (``worker.pipeline``)."""

    def __init__(self, sequences: Iterable[Any] = (), counts: Iterable[int] = (), weights: Iterable[int] = ()) -> None:
        super().__init__(sequences)
        self.counts: list[int] = list(counts)
        self.weights: list[int] = list(weights)


@dataclasses.dataclass(frozen=True, slots=True)
class Chunking:
    """How one request's inputs are chunked on one model with one prompt (see the module's rules)."""

    #: the model's maximum sequence length, special tokens included
    max_length: int
    #: the special tokens ``Encoder.prepare`` puts around each sequence
    special_tokens: int
    #: the prompt's ids, without special tokens, at the start of every chunk
    prompt_ids: tuple[int, ...]
    #: text tokens each window repeats from the end of the one before
    overlap: int
    #: leading tokens of each sequence the pooling leaves out (the batch group: ``Encoder.prompt_length``)
    pooled_out: int

    @classmethod
    def of(cls, encoder: Encoder, prompt: str, overlap: int) -> Chunking:
        """The chunking of ``encoder`` with ``prompt``."""
        return cls(
            max_length=max_length(encoder),
            special_tokens=encoder.special_token_count,
            prompt_ids=tuple(encoder.tokenize([prompt])[0]) if prompt else (),
            overlap=overlap,
            pooled_out=encoder.prompt_length(prompt),
        )

    @property
    def room(self) -> int:
        """Text tokens one chunk holds besides the prompt and the special tokens."""
        return self.max_length - self.special_tokens - len(self.prompt_ids)

    def fits(self, ids: Sequence[int]) -> bool:
        """Whether prompted ids (no special tokens) fit the model as they are."""
        return len(ids) + self.special_tokens <= self.max_length

    def text_of(self, ids: list[int], text_ids: Callable[[], list[int]]) -> list[int]:
        """The text's tokens of prompted ids: what follows the prompt's ids when they start with them, else
        ``text_ids()`` (the text tokenized alone)."""
        prompt = len(self.prompt_ids)
        if tuple(ids[:prompt]) == self.prompt_ids:
            return ids[prompt:]
        return text_ids()

    def windows(self, text: Sequence[int]) -> list[list[int]]:
        """The prompt's ids followed by each window of ``text``, in order (no special tokens yet)."""
        room = self.room
        if self.overlap >= room:
            if room <= 0:
                why = f"its prompt's {len(self.prompt_ids)} tokens leave no room for text in a chunk of this model"
            else:
                why = (
                    f"the chunk overlap (CHUNK_OVERLAP_TOKENS={self.overlap}) must be smaller than the {room} text "
                    "tokens a chunk of this model holds with this prompt"
                )
            message = f"an input longer than this model reads ({self.max_length} tokens) cannot be chunked: {why}"
            raise ServiceError(ErrorKind.INVALID_REQUEST, message, "input")
        step = room - self.overlap
        prompt = list(self.prompt_ids)
        chunks = []
        start = 0
        while True:
            chunks.append(prompt + list(text[start : start + room]))
            if start + room >= len(text):
                return chunks
            start += step


def max_length(encoder: Encoder) -> int:
    """The model's maximum sequence length, special tokens included: its ``max_seq_length``, else what its card
    says (``describe()["max_tokens"]``: the stand-ins)."""
    length = getattr(encoder, "max_seq_length", None)
    if length is None:
        length = encoder.describe().get("max_tokens")
    if not isinstance(length, int):
        raise ServiceError(ErrorKind.INVALID_REQUEST, "this model does not say its maximum length to chunk at", "input")
    return length


def split(
    encoder: Encoder, chunking: Chunking, prompted: Sequence[list[int]], text_ids: Callable[[int], list[int]]
) -> Chunked:
    """Model inputs of every chunk of every input. ``prompted``: each input's ids with its prompt, no special tokens
    (as the pipeline tokenizes them); ``text_ids(i)``: input ``i``'s text tokenized alone, for a text whose ids do
    not start with the prompt's."""
    chunked = Chunked()
    for index, ids in enumerate(prompted):
        if chunking.fits(ids):
            pieces = [list(ids)]
        else:
            pieces = chunking.windows(chunking.text_of(list(ids), functools.partial(text_ids, index)))
        for piece in pieces:
            sequence = encoder.prepare(piece, truncate=False, param="input")
            chunked.append(sequence)
            chunked.weights.append(len(sequence) - chunking.pooled_out)
        chunked.counts.append(len(pieces))
    return chunked


def join(parts: Sequence[list[Any]]) -> list[Any]:
    """Several requests' model inputs as one list; chunked ones stay ``Chunked``, their layouts one after another."""
    if not any(isinstance(part, Chunked) for part in parts):
        return [sequence for part in parts for sequence in part]
    joined = Chunked()
    for part in parts:
        assert isinstance(part, Chunked), "chunked and unchunked requests are not joined"
        joined.extend(part)
        joined.counts.extend(part.counts)
        joined.weights.extend(part.weights)
    return joined


def pool(rows: np.ndarray, chunked: Chunked) -> np.ndarray:
    """One row per input from one row per chunk: an input of one chunk keeps its row as it is; one of several gets
    the average of its chunks' rows weighted by their weights (float64, then float32)."""
    if len(chunked.counts) == len(rows):
        return rows  # every input fits: nothing to pool, so the rows are exactly those of an unchunked request
    pooled = np.empty((len(chunked.counts), rows.shape[1]), dtype=np.float32)
    weights = np.asarray(chunked.weights, dtype=np.float64)
    start = 0
    for index, count in enumerate(chunked.counts):
        if count == 1:
            pooled[index] = rows[start]
        else:
            share = weights[start : start + count]
            pooled[index] = share @ rows[start : start + count].astype(np.float64) / max(share.sum(), 1.0)
        start += count
    return pooled
