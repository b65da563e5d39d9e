"""``POST /v1/embeddings``: the OpenAI embeddings contract, answered through the queue.

Plain ASGI (``api.fast_route`` says why and how it is still a documented FastAPI route). Errors are only raised,
as ``ServiceError`` (rendered by ``api.errors``) or ``ClientGone`` (counted by ``api.metrics``).
"""

from __future__ import annotations

import functools
import time

from starlette.types import Receive, Scope, Send

from api.dispatch import Dispatcher
from api.embeddings.options import EmbedOptions
from api.embeddings.schemas import EmbeddingRequest, EmbeddingResponse, parse_embedding_request
from api.fast_route import json_post
from api.http import parse_json
from api.sync_io import read_body, reply_of, send_json
from shared.openai_json import embeddings_body
from shared.settings import Settings


async def create_embeddings(scope: Scope, receive: Receive, send: Send) -> None:
    state = scope["app"].state
    settings: Settings = state.settings
    dispatcher: Dispatcher = state.dispatcher
    started = time.perf_counter()
    request_id = scope["state"]["request_id"]
    embedding_request = parse_embedding_request(parse_json(await read_body(receive)), settings)
    options = EmbedOptions.of(embedding_request, settings)
    inputs = embedding_request.input[1]
    job = functools.partial(
        options.sync_job, request_id, inputs, embedding_request.encoding_format, embedding_request.output_dtype
    )
    reply = await reply_of(receive, dispatcher.run(job, scope["state"]["owner"]))
    body = embeddings_body(reply.data, embedding_request.model, reply.prompt_tokens)
    await send_json(send, body, reply, started)


ROUTE = json_post(
    "/v1/embeddings", create_embeddings, name="create_embeddings", request=EmbeddingRequest, response=EmbeddingResponse
)
