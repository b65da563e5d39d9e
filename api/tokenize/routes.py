"""TEI's ``POST /tokenize`` and ``POST /decode``: a model's own tokenizer, on a worker, through the same queue as
every synchronous task (``api.sync_route``).

They run on a worker, not here: the API never loads a model's files (its image carries none, and no torch), and the
worker holds the model with the tokenizer, prompts and maximum length its encodings use, so the tokens answered are
the ones the model is fed. No forward pass runs: the worker answers from the tokenizer alone (``worker.tokenizing``),
and the reply is TEI's body as it is sent.
"""

from __future__ import annotations

import functools

from api.dispatch import JobBuilder
from api.fast_route import json_post
from api.sync_route import SyncRoute
from api.tokenize.schemas import DecodeRequest, SimpleToken, TokenizeRequest, requested_model
from shared.protocol import DecodeTask, TaskReply, TokenizeTask
from shared.settings import Settings


def _tokenize_task(request: TokenizeRequest, request_id: str, settings: Settings) -> JobBuilder:
    return functools.partial(
        TokenizeTask,
        request_id=request_id,
        model=requested_model(request, settings),
        inputs=request.inputs,
        add_special_tokens=request.add_special_tokens,
        prompt_name=request.prompt_name,
        truncate=request.truncate,
    )


def _decode_task(request: DecodeRequest, request_id: str, settings: Settings) -> JobBuilder:
    return functools.partial(
        DecodeTask,
        request_id=request_id,
        model=requested_model(request, settings),
        inputs=request.ids,
        skip_special_tokens=request.skip_special_tokens,
    )


def _as_rendered(request: object, reply: TaskReply, request_id: str) -> bytes:
    """The worker renders TEI's answer; it is sent as it comes."""
    return reply.data


TOKENIZE = SyncRoute(
    "/tokenize",
    "tokenize_tei",
    request=TokenizeRequest,
    response=list[list[SimpleToken]],
    task=_tokenize_task,
    render=_as_rendered,
    model=requested_model,
)
DECODE = SyncRoute(
    "/decode",
    "decode_tei",
    request=DecodeRequest,
    response=list[str],
    task=_decode_task,
    render=_as_rendered,
    model=requested_model,
)

ROUTES = [json_post(TOKENIZE), json_post(DECODE)]
