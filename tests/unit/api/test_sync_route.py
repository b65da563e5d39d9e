"""``api.sync_route``: a synchronous route is a declaration (schema, task, rendering); one ASGI function does the
rest: the body read and parsed with the settings, the model check, the dispatch with the request id and owner, and
the answer with its timing headers. Its OpenAPI entry comes from the same declaration (``fast_route.json_post``)."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError
from starlette.types import ASGIApp, Receive, Scope, Send

from api import fast_route
from api.dispatch import JobBuilder
from api.errors import install_error_handlers
from api.sync_route import SyncRoute
from shared.errors import ErrorKind, ServiceError
from shared.protocol import RerankTask, TaskError, TaskReply
from shared.settings import Settings


class EchoRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    texts: list[str]

    @field_validator("texts")
    @classmethod
    def _within_the_deployments_limit(cls, value: list[str], info: ValidationInfo) -> list[str]:
        settings: Settings = (info.context or {})["settings"]
        if len(value) > settings.max_rerank_documents:
            raise PydanticCustomError("invalid_input", "too many texts for this deployment")
        return value


class EchoResponse(BaseModel):
    id: str
    scores: list[float]


class OptionalModelRequest(BaseModel):
    model: str | None = None
    texts: list[str] = Field(min_length=1)


def echo_task(request: EchoRequest | OptionalModelRequest, request_id: str, settings: Settings) -> JobBuilder:
    return functools.partial(
        RerankTask,
        request_id=request_id,
        model=request.model or "default-model",
        query="q",
        inputs=request.texts,
        truncate=settings.truncate_inputs,
        max_tokens_per_doc=None,
        raw_scores=False,
    )


def echo_render(request: EchoRequest | OptionalModelRequest, reply: TaskReply, request_id: str) -> bytes:
    return orjson.dumps({"id": request_id, "scores": orjson.loads(reply.data), "texts": request.texts})


def default_model(request: OptionalModelRequest, settings: Settings) -> str:
    if request.model is None:
        raise ServiceError(ErrorKind.INVALID_REQUEST, "model is required", "model")
    return request.model


ECHO = SyncRoute("/v1/echo", "echo", request=EchoRequest, response=EchoResponse, task=echo_task, render=echo_render)
OPTIONAL = SyncRoute(
    "/v1/optional",
    "optional",
    request=OptionalModelRequest,
    response=EchoResponse,
    task=echo_task,
    render=echo_render,
    model=default_model,
)


class FakeDispatcher:
    """Builds each job as the real one does and answers it at once: one score a text, or the error it is given."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Any, str]] = []
        self.error: TaskError | None = None

    async def run(self, build: JobBuilder, owner: str) -> TaskReply:
        job = build(reply_to="emb:reply:test", enqueued_ms=1, deadline_ms=2)
        self.jobs.append((job, owner))
        scores = [float(len(text)) for text in job.inputs]
        return TaskReply(
            job.request_id,
            data=orjson.dumps(scores),
            prompt_tokens=len(scores),
            error=self.error,
            queue_ms=1.5,
            inference_ms=2.5,
            batch_size=3,
            batch_requests=2,
        )


class Identified:
    """What ``RequestTracking`` and ``ApiKeyAuth`` put in the scope before a fast route runs."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope.setdefault("state", {}).update(request_id="req-1", owner="key-a")
        await self._app(scope, receive, send)


@pytest.fixture
def dispatcher() -> FakeDispatcher:
    return FakeDispatcher()


@pytest.fixture
def app(dispatcher: FakeDispatcher) -> FastAPI:
    app = FastAPI()
    app.state.settings = Settings(_env_file=None, embed_models=["m"], max_rerank_documents=3)
    app.state.dispatcher = dispatcher
    install_error_handlers(app)
    second = dataclasses.replace(ECHO, path="/v2/echo", name="echo_v2")
    fast_route.install(app, fast_route.json_post(ECHO), fast_route.json_post(second), fast_route.json_post(OPTIONAL))
    app.add_middleware(Identified)
    return app


@pytest.fixture
async def client(app: FastAPI):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        yield client


async def test_a_declared_route_builds_its_task_dispatches_it_and_renders_the_reply(client, dispatcher):
    response = await client.post("/v1/echo", json={"model": "m", "texts": ["ab", "cde"]})
    assert response.status_code == 200, response.text
    assert response.json() == {"id": "req-1", "scores": [2.0, 3.0], "texts": ["ab", "cde"]}
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.content)
    assert response.headers["x-queue-time-ms"] == "1.5"
    assert response.headers["x-inference-time-ms"] == "2.5"
    assert float(response.headers["x-total-time-ms"]) >= 0
    assert response.headers["x-batch-size"] == "3" and response.headers["x-batch-requests"] == "2"
    [(job, owner)] = dispatcher.jobs
    assert owner == "key-a"
    assert (job.request_id, job.model, job.inputs, job.reply_to) == ("req-1", "m", ["ab", "cde"], "emb:reply:test")


async def test_one_declaration_serves_another_path(client, dispatcher):
    response = await client.post("/v2/echo", json={"model": "m", "texts": ["x"]})
    assert response.status_code == 200 and response.json()["scores"] == [1.0]


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        (b"{not json", 400, "invalid_request", None),
        (b"[]", 400, "invalid_request", None),
        (orjson.dumps({"model": "m", "texts": ["a"], "extra": 1}), 400, "invalid_request", "extra"),
        # the settings reach the schema's validators
        (orjson.dumps({"model": "m", "texts": ["a"] * 4}), 400, "invalid_request", "texts"),
        (orjson.dumps({"model": "elsewhere", "texts": ["a"]}), 404, "model_not_found", "model"),
    ],
)
async def test_bad_requests_are_refused_before_any_dispatch(client, dispatcher, body, status, code, param):
    response = await client.post("/v1/echo", content=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["param"] == param
    assert not dispatcher.jobs


async def test_a_route_may_say_which_model_a_request_is_for(client, dispatcher):
    missing = await client.post("/v1/optional", json={"texts": ["a"]})
    unserved = await client.post("/v1/optional", json={"model": "other", "texts": ["a"]})
    served = await client.post("/v1/optional", json={"model": "m", "texts": ["a"]})
    assert missing.status_code == 400 and missing.json()["error"]["message"] == "model is required"
    assert unserved.status_code == 404 and unserved.json()["error"]["message"] == "model 'other' is not served here"
    assert served.status_code == 200
    assert [job.model for job, _ in dispatcher.jobs] == ["m"]


async def test_a_workers_error_is_the_routes_error(client, dispatcher):
    dispatcher.error = TaskError(ErrorKind.INPUT_TOO_LONG, "too long", "texts")
    response = await client.post("/v1/echo", json={"model": "m", "texts": ["a"]})
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "too long",
        "type": "invalid_request_error",
        "param": "texts",
        "code": ErrorKind.INPUT_TOO_LONG.value,
    }


def test_the_openapi_entry_comes_from_the_declaration(app):
    paths = app.openapi()["paths"]
    assert list(paths["/v1/echo"]) == ["post"] and list(paths["/v2/echo"]) == ["post"]
    operation = paths["/v1/echo"]["post"]
    assert operation["operationId"].startswith("echo_")
    body = operation["requestBody"]
    assert body["required"] is True
    assert body["content"]["application/json"]["schema"] == EchoRequest.model_json_schema()
    assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/EchoResponse"
    }
    assert {"400", "404", "429", "503", "504"} <= set(operation["responses"])
    assert paths["/v2/echo"]["post"]["operationId"].startswith("echo_v2_")
