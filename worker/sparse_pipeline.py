"""From a sparse task to its vectors: the sparse model it names, the prompt and task (``query`` / ``document`` / none)
its options choose, tokens as the model's own ``preprocess`` makes them, the micro-batcher, then each row's nonzero
values. The steps are ``worker.task_pipeline``'s; this module says what a sparse task does in them. Pure of Redis.

Which prompt and task a request gets, as ``SparseEncoder`` decides them (``sparse_prompt``):

- ``input_type: "query"`` is ``encode_query``: task ``query`` (a ``Router`` takes its query route) and, unless a
  ``prompt_name`` is given, the model's ``query`` prompt when it has one, else its default prompt;
- ``input_type: "document"`` is ``encode_document``: task ``document`` and the first of the model's ``document``,
  ``passage`` and ``corpus`` prompts, else its default prompt;
- neither is ``encode``: no task (a ``Router``'s default route) and the model's default prompt;
- ``prompt_name`` names the prompt in every case (a name the model lacks is a 400 listing its prompts).

The worker renders the answers (``shared.sparse``: TEI's, and ``/v1/embeddings``' ``sparse_embedding`` items); the
API frames them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import NamedTuple

from shared.errors import ErrorKind, ServiceError
from shared.protocol import EmbedInputs, EmbedTask
from shared.sparse import SparseRow, sparse_rows
from worker.batcher import BatchStats, Encoded
from worker.long_inputs import unchunked
from worker.models.encoder_protocol import SparseModel
from worker.models.registry import LoadedModel
from worker.models.sparse_encoder import SparseTokens
from worker.task_pipeline import TaskPipeline, Tokenized, model_of_kind, timeout_s

#: the prompts ``encode_document`` tries, in order, when it is given none
DOCUMENT_PROMPTS = ("document", "passage", "corpus")


@dataclasses.dataclass(frozen=True, slots=True)
class Sparse:
    """A task's sparse vectors (per input: int32 indices ascending, float32 values), what the model read, and the
    batch that served it."""

    rows: list[SparseRow]
    prompt_tokens: int
    stats: BatchStats


class SparsePlan(NamedTuple):
    """A sparse task's model, the prompt before each text, the task it is encoded for, and whether an over-long text
    is cut (else refused)."""

    model: SparseModel
    prompt: str
    task: str | None
    truncate: bool


def sparse_prompt(
    prompts: Mapping[str, str], default_prompt_name: str | None, prompt_name: str | None, input_type: str | None
) -> str:
    """The prompt ``SparseEncoder.encode`` / ``encode_query`` / ``encode_document`` applies ("" for none)."""
    if prompt_name is None:
        if input_type == "query" and "query" in prompts:
            prompt_name = "query"
        elif input_type == "document":
            prompt_name = next((name for name in DOCUMENT_PROMPTS if name in prompts), None)
    if prompt_name is not None:
        if prompt_name not in prompts:
            names = ", ".join(repr(key) for key in prompts) or "none"
            message = f"this model has no prompt named {prompt_name!r}; its prompts: {names}"
            raise ServiceError(ErrorKind.INVALID_REQUEST, message, "prompt_name")
        return prompts[prompt_name] or ""
    if default_prompt_name is not None:
        return prompts.get(default_prompt_name) or ""
    return ""


class SparsePipeline(TaskPipeline[EmbedInputs, SparsePlan, SparseTokens, Sparse]):
    tokens_param = "input"

    async def embed_sparse(self, job: EmbedInputs, *, urgent: bool = True, deadline_ms: int | None = None) -> Sparse:
        """``deadline_ms``: past it, a job still waiting for its model to load or for a batch fails with a timeout."""
        return await self.run(job, urgent=urgent, deadline_ms=deadline_ms)

    async def serves(self, job: EmbedInputs, deadline_ms: int | None = None) -> bool:
        """Whether the model ``job`` names is a sparse model (loaded within the deadline if need be): an embed task
        for one is answered with sparse vectors."""
        loaded = await self.registry.get(job.model, timeout_s(deadline_ms))
        return loaded.model.kind == "sparse"

    def prepare(self, loaded: LoadedModel, task: EmbedInputs) -> SparsePlan:
        """The model as a sparse model, and the prompt and task the job's options choose; a 400 for an option a
        sparse vector has no meaning for."""
        model = model_of_kind(loaded, "sparse")
        truncate = unchunked(task.truncate)
        if task.input_kind != "text":
            raise _not_for_sparse("input", "takes text only, not token ids or images")
        if task.dimensions is not None:
            raise _not_for_sparse("dimensions", "has no dimensions to cut: its vectors are sparse")
        if task.normalize is not None:
            raise _not_for_sparse("normalize", "gives its vectors as the model computes them; normalize is not taken")
        # encoding_format does not apply: the official OpenAI clients ask for base64 unless told otherwise, and
        # sparse items are indices and values as JSON whatever was asked (the clients pass them through)
        if isinstance(task, EmbedTask) and task.output_dtype != "float":
            raise _not_for_sparse("output_dtype", "answers float values; use output_dtype float")
        prompt = sparse_prompt(model.prompts, model.default_prompt_name, task.prompt_name, task.input_type)
        return SparsePlan(model, prompt, task.input_type, truncate)

    def sequences(self, plan: SparsePlan, task: EmbedInputs) -> list[SparseTokens]:
        return plan.model.sequences(task.inputs, prompt=plan.prompt, task=plan.task, truncate=plan.truncate)

    def group(self, plan: SparsePlan) -> int:
        return plan.model.group(plan.task)

    def result(
        self, plan: SparsePlan, task: EmbedInputs, tokenized: Tokenized[SparseTokens], encoded: Encoded
    ) -> Sparse:
        prompt_tokens = tokenized.tokens - len(tokenized.sequences) * plan.model.special_tokens(plan.task)
        return Sparse(sparse_rows(encoded.vectors), prompt_tokens, encoded.stats)


def _not_for_sparse(param: str, why: str) -> ServiceError:
    return ServiceError(ErrorKind.INVALID_REQUEST, f"a sparse model {why}", param)
