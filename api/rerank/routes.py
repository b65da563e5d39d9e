"""``POST /v1/rerank``, ``/v2/rerank`` (Cohere's and Jina's shape) and ``/rerank`` (TEI's): a query scored against
documents by a cross-encoder, through the same queue, workers and micro-batcher as embeddings.

Plain ASGI, as ``/v1/embeddings`` is (``api.fast_route``). The worker answers the scores in the documents' order;
the ranking, ``top_n`` and the documents' texts are put together here.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from api.dispatch import Dispatcher
from api.embeddings.schemas import served
from api.fast_route import json_post
from api.http import parse_body, parse_json
from api.rerank.schemas import RerankRequest, RerankResponse, TeiRank, TeiRerankRequest
from api.sync_io import read_body, reply_of, send_json
from shared.errors import ErrorKind, ServiceError
from shared.protocol import RerankTask, TaskReply
from shared.settings import Settings

_META = {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}}


async def rerank(scope: Scope, receive: Receive, send: Send) -> None:
    settings: Settings = scope["app"].state.settings
    started = time.perf_counter()
    request_id: str = scope["state"]["request_id"]
    request = served(parse_body(RerankRequest, parse_json(await read_body(receive)), {"settings": settings}), settings)
    documents = request.texts()
    reply = await _scored(
        scope,
        receive,
        request_id=request_id,
        model=request.model,
        query=request.query,
        inputs=documents,
        truncate=True,  # as Cohere does, and CrossEncoder.predict: a long document is cut, not refused
        max_tokens_per_doc=request.max_tokens_per_doc,
        raw_scores=request.raw_scores,
    )
    scores: list[float] = orjson.loads(reply.data)
    results: list[dict[str, Any]] = []
    for index in ranking(scores, request.top_n):
        result: dict[str, Any] = {"index": index, "relevance_score": scores[index]}
        if request.return_documents:
            result["document"] = {"text": documents[index]}
        results.append(result)
    body = {
        "id": request_id,
        "model": request.model,
        "results": results,
        "usage": {"total_tokens": reply.prompt_tokens},
        "meta": _META,
    }
    await send_json(send, orjson.dumps(body), reply, started)


async def rerank_tei(scope: Scope, receive: Receive, send: Send) -> None:
    settings: Settings = scope["app"].state.settings
    started = time.perf_counter()
    request = parse_body(TeiRerankRequest, parse_json(await read_body(receive)), {"settings": settings})
    model = request.model or settings.default_rerank_model
    if model is None:
        raise ServiceError(
            ErrorKind.INVALID_REQUEST, "model is required: this deployment sets no DEFAULT_RERANK_MODEL", "model"
        )
    if not settings.model_allowed(model):
        raise ServiceError(ErrorKind.MODEL_NOT_FOUND, f"model {model!r} is not served here", "model")
    reply = await _scored(
        scope,
        receive,
        request_id=scope["state"]["request_id"],
        model=model,
        query=request.query,
        inputs=request.texts,
        truncate=settings.truncate_inputs if request.truncate is None else request.truncate,
        max_tokens_per_doc=None,
        raw_scores=request.raw_scores,
    )
    scores: list[float] = orjson.loads(reply.data)
    ranks: list[dict[str, Any]] = []
    for index in ranking(scores, None):
        rank: dict[str, Any] = {"index": index, "score": scores[index]}
        if request.return_text:
            rank["text"] = request.texts[index]
        ranks.append(rank)
    await send_json(send, orjson.dumps(ranks), reply, started)


def ranking(scores: list[float], top_n: int | None) -> list[int]:
    """Document indices by score, best first (ties in input order, as ``CrossEncoder.rank``), the first
    ``top_n``."""
    order = sorted(range(len(scores)), key=lambda index: -scores[index])
    return order if top_n is None else order[:top_n]


async def _scored(scope: Scope, receive: Receive, **fields: Any) -> TaskReply:
    """The worker's scores for the ``RerankTask`` of these fields (the dispatcher adds where to answer, and when)."""
    dispatcher: Dispatcher = scope["app"].state.dispatcher
    return await reply_of(receive, dispatcher.run(functools.partial(RerankTask, **fields), scope["state"]["owner"]))


ROUTES = [
    json_post("/v1/rerank", rerank, name="rerank", request=RerankRequest, response=RerankResponse),
    json_post("/v2/rerank", rerank, name="rerank_v2", request=RerankRequest, response=RerankResponse),
    json_post("/rerank", rerank_tei, name="rerank_tei", request=TeiRerankRequest, response=list[TeiRank]),
]
