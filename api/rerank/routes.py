"""``POST /v1/rerank``, ``/v2/rerank`` (Cohere's and Jina's shape) and ``/rerank`` (TEI's): a query scored against
documents by a cross-encoder, through the same queue, workers and micro-batcher as embeddings.

Synchronous routes (``api.sync_route``), as ``/v1/embeddings`` is. The worker answers the scores in the documents'
order; the ranking, ``top_n`` and the documents' texts are put together here.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import orjson

from api.dispatch import JobBuilder
from api.fast_route import json_post
from api.rerank.schemas import RerankRequest, RerankResponse, TeiRank, TeiRerankRequest
from api.sync_route import SyncRoute
from shared.errors import ErrorKind, ServiceError
from shared.protocol import RerankTask, TaskReply
from shared.settings import Settings

_META = {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}}


def _task(request: RerankRequest, request_id: str, settings: Settings) -> JobBuilder:
    return functools.partial(
        RerankTask,
        request_id=request_id,
        model=request.model,
        query=request.query,
        inputs=request.texts(),
        truncate=True,  # as Cohere does, and CrossEncoder.predict: a long document is cut, not refused
        max_tokens_per_doc=request.max_tokens_per_doc,
        raw_scores=request.raw_scores,
    )


def _render(request: RerankRequest, reply: TaskReply, request_id: str) -> bytes:
    scores: list[float] = orjson.loads(reply.data)
    results: list[dict[str, Any]] = []
    for index in ranking(scores, request.top_n):
        result: dict[str, Any] = {"index": index, "relevance_score": scores[index]}
        if request.return_documents:
            document = request.documents[index]
            result["document"] = {"text": document if isinstance(document, str) else document.text}
        results.append(result)
    body = {
        "id": request_id,
        "model": request.model,
        "results": results,
        "usage": {"total_tokens": reply.prompt_tokens},
        "meta": _META,
    }
    return orjson.dumps(body)


def _tei_model(request: TeiRerankRequest, settings: Settings) -> str:
    """The model it names, else the deployment's ``DEFAULT_RERANK_MODEL``."""
    model = request.model or settings.default_rerank_model
    if model is None:
        raise ServiceError(
            ErrorKind.INVALID_REQUEST, "model is required: this deployment sets no DEFAULT_RERANK_MODEL", "model"
        )
    return model


def _tei_task(request: TeiRerankRequest, request_id: str, settings: Settings) -> JobBuilder:
    return functools.partial(
        RerankTask,
        request_id=request_id,
        model=_tei_model(request, settings),
        query=request.query,
        inputs=request.texts,
        truncate=settings.truncate_inputs if request.truncate is None else request.truncate,
        max_tokens_per_doc=None,
        raw_scores=request.raw_scores,
    )


def _tei_render(request: TeiRerankRequest, reply: TaskReply, request_id: str) -> bytes:
    scores: list[float] = orjson.loads(reply.data)
    ranks: list[dict[str, Any]] = []
    for index in ranking(scores, None):
        rank: dict[str, Any] = {"index": index, "score": scores[index]}
        if request.return_text:
            rank["text"] = request.texts[index]
        ranks.append(rank)
    return orjson.dumps(ranks)


def ranking(scores: list[float], top_n: int | None) -> list[int]:
    """Document indices by score, best first (ties in input order, as ``CrossEncoder.rank``), the first
    ``top_n``."""
    order = sorted(range(len(scores)), key=lambda index: -scores[index])
    return order if top_n is None else order[:top_n]


RERANK = SyncRoute("/v1/rerank", "rerank", request=RerankRequest, response=RerankResponse, task=_task, render=_render)
TEI_RERANK = SyncRoute(
    "/rerank",
    "rerank_tei",
    request=TeiRerankRequest,
    response=list[TeiRank],
    task=_tei_task,
    render=_tei_render,
    model=_tei_model,
)

ROUTES = [
    json_post(RERANK),
    json_post(dataclasses.replace(RERANK, path="/v2/rerank", name="rerank_v2")),
    json_post(TEI_RERANK),
]
