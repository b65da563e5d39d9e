"""TEI's ``/tokenize`` and ``/decode`` on a worker: the task's model, loaded as for any task, and its own tokenizer,
used exactly as the embedding pipeline uses it (``worker.pipeline``), with no forward pass and so no batcher.

- **Tokenize.** Each text gets the prompt an embedding of it would get (``prompt_name``, else the model's default
  prompt: ``worker.models.prompts``) and is tokenized with it as one string, without special tokens, as
  ``SentenceTransformerEncoder.tokenize`` does; the model's special tokens are then put around it as its
  ``prepare`` puts them (the ids a tokenizer adds to one sequence: ``[CLS] ... [SEP]``, ``<s> ... </s>``). So the
  ids are those the model is fed for that text. ``truncate`` keeps only what the model reads (cut to its maximum
  length, as an embedding with ``truncate`` is cut); without it every token comes back, as TEI answers.
- **Tokens** are TEI's ``{"id", "text", "special", "start", "stop"}``: a special token has its token string as
  ``text`` and no offsets; any other token its UTF-8 byte offsets into the prompted text (prompt + input), and the
  text between them, as TEI's ``into_tokens`` gives them. A prompt's tokens are ordinary tokens, as in TEI.
- **Decode** is the tokenizer's own ``decode`` (its ``skip_special_tokens``, its cleanup of spaces), one id list at
  a time, after every id is checked against the vocabulary (400 outside it).

Any model kind with a Hugging Face tokenizer is served (``Tokenizes``: embedding models and rerankers; a reranker's
text is tokenized as one sequence, not as a pair). Pure of Redis: ``worker.sync_jobs`` brings the tasks.
"""

from __future__ import annotations

import dataclasses
import itertools
import weakref
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import orjson

from shared.errors import ErrorKind, ServiceError
from shared.protocol import DecodeTask, TokenizeTask
from worker.models.prompts import resolve_prompt
from worker.models.registry import ModelRegistry
from worker.task_pipeline import off_loop, timeout_s


@runtime_checkable
class Tokenizes(Protocol):
    """What tokenize and decode need of a model: its Hugging Face tokenizer, maximum length and prompts."""

    tokenizer: Any
    max_seq_length: int
    prompts: dict[str, str]
    default_prompt_name: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class Tokenized:
    """A tokenize task's answer (TEI's JSON) and how many tokens it holds."""

    data: bytes
    tokens: int


class TokenView:
    """A model's tokenizer as ``/tokenize`` and ``/decode`` use it (see the module's notes)."""

    def __init__(self, tokenizer: Any, max_seq_length: int) -> None:
        from worker.models.encoder import _special_tokens  # torch: only a loaded model brings it in

        self._tokenizer = tokenizer
        self._prefix, self._suffix = _special_tokens(tokenizer)
        #: tokens of one text the model reads besides its special tokens
        self._room = max_seq_length - len(self._prefix) - len(self._suffix)
        self._offsets = bool(getattr(tokenizer, "is_fast", False))  # only fast tokenizers map tokens to offsets
        self.vocab_size = len(tokenizer)

    def tokens(
        self, texts: Sequence[str], *, prompt: str, add_special_tokens: bool, truncate: bool, max_tokens: int
    ) -> Tokenized:
        """TEI's answer for ``texts``: per text, its tokens; a 400 past ``max_tokens`` in all."""
        prompted = [prompt + text for text in texts]
        encoded = self._tokenizer(
            prompted,
            add_special_tokens=False,
            truncation=False,
            return_offsets_mapping=self._offsets,
            verbose=False,
        )
        all_ids: list[list[int]] = encoded["input_ids"]
        if truncate:
            all_ids = [ids[: self._room] for ids in all_ids]
        specials = len(self._prefix) + len(self._suffix) if add_special_tokens else 0
        count = sum(map(len, all_ids)) + specials * len(all_ids)
        if count > max_tokens:
            message = f"this request has {count} tokens; at most {max_tokens} are allowed in one request"
            raise ServiceError(ErrorKind.INVALID_REQUEST, message, "inputs")
        offsets: list[list[tuple[int, int]]] | None = encoded.get("offset_mapping") if self._offsets else None
        answer = []
        for row, (text, ids) in enumerate(zip(prompted, all_ids, strict=True)):
            tokens = self._special(self._prefix) if add_special_tokens else []
            tokens += self._ordinary(text, ids, None if offsets is None else offsets[row])
            if add_special_tokens:
                tokens += self._special(self._suffix)
            answer.append(tokens)
        return Tokenized(orjson.dumps(answer), count)

    def decode(self, sequences: Sequence[Sequence[int]], *, skip_special_tokens: bool) -> bytes:
        """Each id list as text, as the tokenizer decodes it; a 400 for an id outside the vocabulary."""
        for ids in sequences:
            for token in ids:
                if not 0 <= token < self.vocab_size:
                    raise ServiceError(
                        ErrorKind.INVALID_REQUEST,
                        f"token id {token} is outside this model's vocabulary (0..{self.vocab_size - 1})",
                        "ids",
                    )
        texts = [str(self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)) for ids in sequences]
        return orjson.dumps(texts)

    def _special(self, ids: list[int]) -> list[dict[str, Any]]:
        names: list[str] = self._tokenizer.convert_ids_to_tokens(ids)
        return [
            {"id": id_, "text": name, "special": True, "start": None, "stop": None}
            for id_, name in zip(ids, names, strict=True)
        ]

    def _ordinary(self, text: str, ids: list[int], offsets: list[tuple[int, int]] | None) -> list[dict[str, Any]]:
        if offsets is None:  # a slow tokenizer: the token strings, no offsets
            names: list[str] = self._tokenizer.convert_ids_to_tokens(ids)
            return [
                {"id": id_, "text": name, "special": False, "start": None, "stop": None}
                for id_, name in zip(ids, names, strict=True)
            ]
        # character offsets to UTF-8 byte offsets (TEI's), by each character's start in bytes
        at = None if text.isascii() else list(itertools.accumulate((len(c.encode()) for c in text), initial=0))
        tokens = []
        for id_, (start, stop) in zip(ids, offsets, strict=False):
            tokens.append(
                {
                    "id": id_,
                    "text": text[start:stop],
                    "special": False,
                    "start": start if at is None else at[start],
                    "stop": stop if at is None else at[stop],
                }
            )
        return tokens


class Tokenizing:
    """Tokenize and decode tasks on the models of ``registry``. ``max_tokens``: the most tokens a tokenize task may
    answer (the request token limit, ``MAX_TOKENS_PER_REQUEST``)."""

    def __init__(self, registry: ModelRegistry, *, max_tokens: int = 1 << 62) -> None:
        self.registry = registry
        self._max_tokens = max_tokens
        self._views: weakref.WeakKeyDictionary[Any, TokenView] = weakref.WeakKeyDictionary()

    async def tokenize(self, task: TokenizeTask, *, deadline_ms: int | None = None) -> Tokenized:
        model = await self._model(task.model, deadline_ms)
        prompt = resolve_prompt(model.prompts, model.default_prompt_name, task.prompt_name, None)
        view = self._view(model)
        chars = len(prompt) * len(task.inputs) + sum(map(len, task.inputs))
        return await off_loop(
            chars,
            view.tokens,
            task.inputs,
            prompt=prompt,
            add_special_tokens=task.add_special_tokens,
            truncate=task.truncate,
            max_tokens=self._max_tokens,
        )

    async def decode(self, task: DecodeTask, *, deadline_ms: int | None = None) -> bytes:
        view = self._view(await self._model(task.model, deadline_ms))
        ids = sum(map(len, task.inputs))
        return await off_loop(ids, view.decode, task.inputs, skip_special_tokens=task.skip_special_tokens)

    async def _model(self, name: str, deadline_ms: int | None) -> Tokenizes:
        """The named model, loaded as for any task; a 400 if it has no tokenizer to answer with."""
        loaded = await self.registry.get(name, timeout_s(deadline_ms))
        model = loaded.model
        if not isinstance(model, Tokenizes) or model.tokenizer is None:
            raise ServiceError(ErrorKind.INVALID_REQUEST, f"model {name!r} has no tokenizer to answer with", "model")
        return model

    def _view(self, model: Tokenizes) -> TokenView:
        view = self._views.get(model)
        if view is None:
            view = self._views[model] = TokenView(model.tokenizer, model.max_seq_length)
        return view
