"""A synchronous route, declared: what it parses, the task it asks of a worker and how it renders the reply.

Every synchronous route (``/v1/embeddings``, ``/v2/embed``, the rerank routes) is answered the same way, by one
plain ASGI function (``SyncRoute.__call__``; ``api.fast_route`` says why plain ASGI): read the body and validate it
as the route's ``request`` schema (with the deployment's settings in the validation context: ``{"settings": ...}``),
check that the model it names is served here, build its task (``task``: the ``JobBuilder`` the ``Dispatcher``
takes), wait for the worker's reply (or the client's leaving, ``api.sync_io.reply_of``), and send what ``render``
makes of it, with the reply's timing headers. A route declares only what is its own; ``api.fast_route.json_post``
documents it to FastAPI from the same declaration.

Errors are only raised, as ``ServiceError`` (rendered by ``api.fast_route.FastRoutes``) or ``ClientGone`` (counted
by ``api.metrics``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from starlette.types import Receive, Scope, Send

from api.dispatch import Dispatcher, JobBuilder
from api.embeddings.schemas import require_served
from api.http import parse_body, parse_json
from api.sync_io import read_body, reply_of, send_json
from shared.protocol import TaskReply
from shared.settings import Settings

Request = TypeVar("Request", bound=BaseModel)


def named_model(request: Any, settings: Settings) -> str:
    """The model a request names in its ``model`` field (the default ``SyncRoute.model``)."""
    model: str = request.model
    return model


@dataclasses.dataclass(frozen=True, slots=True)
class SyncRoute(Generic[Request]):
    """A synchronous route: a ``POST`` of a JSON ``request`` answered, through the queue, with a JSON body.

    Its instances are the routes' ASGI functions. ``task(request, request_id, settings)`` and
    ``render(request, reply, request_id)`` run once a request, so they should allocate no more than the task and
    the body need.
    """

    #: where it is served, and its name in the OpenAPI document
    path: str
    name: str
    #: the body's schema: validated with ``{"settings": Settings}`` as context, and documented
    request: type[Request]
    #: the 200 answer's shape, for the OpenAPI document only
    response: Any
    #: the task the request asks of a worker, as the ``Dispatcher`` takes it (it adds where and when to answer)
    task: Callable[[Request, str, Settings], JobBuilder]
    #: the response body: the worker's (successful) reply rendered for the request
    render: Callable[[Request, TaskReply, str], bytes]
    #: the model the request is for, checked against the served ones; raises a ServiceError if it names none
    model: Callable[[Request, Settings], str] = named_model

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope["app"].state
        settings: Settings = state.settings
        dispatcher: Dispatcher = state.dispatcher
        started = time.perf_counter()
        scope_state = scope["state"]
        request_id: str = scope_state["request_id"]
        request = parse_body(self.request, parse_json(await read_body(receive)), {"settings": settings})
        require_served(self.model(request, settings), settings)
        reply = await reply_of(receive, dispatcher.run(self.task(request, request_id, settings), scope_state["owner"]))
        await send_json(send, self.render(request, reply, request_id), reply, started)
