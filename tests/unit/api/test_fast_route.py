"""``api.fast_route``: the plain-ASGI route beside FastAPI, under a root path, and its place in the middleware."""

import fakeredis
import httpx
import pytest
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from api import fast_route
from api.auth import ApiKeyAuth
from api.body_limit import BodySizeLimit
from api.errors import install_error_handlers
from api.main import create_app
from api.metrics import RequestTracking
from shared.errors import ErrorKind, ServiceError
from shared.settings import Settings
from tests.fakes import fake_redis_factory


async def fast_answer(scope: Scope, receive: Receive, send: Send) -> None:
    body = await receive()
    if body.get("body") == b"fail":
        raise ServiceError(ErrorKind.INVALID_REQUEST, "refused", "input")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    # the router, had it matched the route, would have added the path parameters to the scope
    served_by = b"router" if "path_params" in scope else b"fast routes"
    await send({"type": "http.response.body", "body": served_by})


def small_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    fast_route.install(app, fast_route.FastRoute("/v1/fast", fast_answer, method="POST"))
    return app


@pytest.mark.parametrize(
    ("root_path", "url"),
    [
        ("", "/v1/fast"),
        # uvicorn --root-path /embed: the ASGI path carries the root path (as the ASGI spec says it should)
        ("/embed", "/embed/v1/fast"),
        # a proxy that strips the prefix before uvicorn, root_path still set
        ("/embed", "/v1/fast"),
    ],
)
async def test_the_fast_route_is_found_with_or_without_a_root_path(root_path, url):
    transport = httpx.ASGITransport(app=small_app(), root_path=root_path)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post(url, content=b"x")
    assert response.status_code == 200 and response.text == "fast routes"


async def test_its_service_errors_are_the_apps_openai_errors_and_other_methods_are_405():
    transport = httpx.ASGITransport(app=small_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        refused = await client.post("/v1/fast", content=b"fail")
        other_method = await client.get("/v1/fast")
    assert refused.status_code == 400
    assert refused.json()["error"] == {
        "message": "refused",
        "type": "invalid_request_error",
        "param": "input",
        "code": "invalid_request",
    }
    assert other_method.status_code == 405 and other_method.json()["error"]["code"] == "method_not_allowed"


def test_the_fast_route_is_documented_like_any_other():
    paths = small_app().openapi()["paths"]
    assert list(paths["/v1/fast"]) == ["post"]


async def test_fast_routes_is_the_innermost_middleware_of_the_app():
    """Keys, body limits and request ids must run before the embeddings route: Starlette runs ``user_middleware``
    outermost first, and ``fast_route.install`` must come before every ``add_middleware``."""
    settings = Settings(_env_file=None, api_keys=["sk-test"], max_body_bytes=1024, embed_models=["fake-model"])
    app = create_app(settings, redis_factory=fake_redis_factory(fakeredis.FakeServer()))
    order = [middleware.cls for middleware in app.user_middleware]
    assert order == [RequestTracking, ApiKeyAuth, BodySizeLimit, fast_route.FastRoutes]

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            no_key = await client.post("/v1/embeddings", json={"model": "fake-model", "input": "x"})
            too_big = await client.post(
                "/v1/embeddings",
                json={"model": "fake-model", "input": "x" * 2000},
                headers={"authorization": "Bearer sk-test"},
            )
    assert no_key.status_code == 401 and len(no_key.headers["x-request-id"]) == 32
    assert too_big.status_code == 413 and len(too_big.headers["x-request-id"]) == 32
