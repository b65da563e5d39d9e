"""A route served as plain ASGI, ahead of FastAPI's request handling, yet documented by FastAPI like any other.

``POST /v1/embeddings`` is the service's hottest path. FastAPI's per-request machinery (Request objects,
dependency solving, exception middleware, exit stacks, included-router resolution) cost about as much CPU as the
whole trip through the queue (bench/run.py, pipeline section), so the endpoint is a plain ASGI function and:

- ``FastRoute`` declares it to FastAPI: an ``APIRoute`` whose OpenAPI entry comes from its declaration and whose
  requests, should the router ever see one, go to the same function; the router still answers 405 for other
  methods on the path.
- ``FastRoutes`` (the innermost middleware: metrics, keys and body limit run before it) hands matching requests
  straight to the function, and renders the ``ServiceError``s it raises with the app's one error renderer.

``install`` puts both in place. A ``ClientGone`` raised by the function goes up to ``api.metrics.RequestTracking``.
The synchronous routes are declared as ``api.sync_route.SyncRoute``s, each its own ASGI function; ``json_post`` makes
one a ``FastRoute``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import SYNC_ERRORS, error_responses, service_error_response
from api.http import route_path
from shared import tracing
from shared.errors import ServiceError

if TYPE_CHECKING:
    from api.sync_route import SyncRoute


async def _declared_only() -> None:
    raise AssertionError("a FastRoute's requests go to its ASGI function")


class FastRoute(APIRoute):
    """An APIRoute, documented from its declaration, whose requests go straight to a plain ASGI function."""

    def __init__(self, path: str, endpoint: ASGIApp, *, method: str, **kwargs: Any) -> None:
        super().__init__(path, _declared_only, methods=[method], **kwargs)
        self.app = endpoint
        self.method = method


def json_post(route: SyncRoute[Any]) -> FastRoute:
    """The ``FastRoute`` of a synchronous route: a POST served by the declaration itself, documented as taking its
    JSON ``request`` and answering its ``response``, or the errors any synchronous route may answer."""
    return FastRoute(
        route.path,
        route,
        method="POST",
        name=route.name,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": route.request.model_json_schema()}},
            }
        },
        response_class=Response,
        responses={200: {"model": route.response}, **error_responses(*SYNC_ERRORS)},
    )


class FastRoutes:
    """ASGI middleware, the innermost: sends each request for a ``FastRoute`` to its function."""

    def __init__(self, app: ASGIApp, routes: list[FastRoute]) -> None:
        self._app = app
        self._routes = {(route.method, route.path): route for route in routes}

    def keys(self) -> list[tuple[str, str]]:
        """The (method, path) of each route it serves."""
        return list(self._routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self._routes.get((scope["method"], route_path(scope))) if scope["type"] == "http" else None
        if route is None:
            await self._app(scope, receive, send)
            return
        scope["route"] = route
        tracing.route_matched(route.method, route.path)
        try:
            await route.app(scope, receive, send)
        except ServiceError as exc:
            response = service_error_response(exc, scope.get("state", {}).get("request_id"))
            await response(scope, receive, send)


def install(app: FastAPI, *routes: FastRoute) -> None:
    """Document ``routes`` first in the app's router, and serve them through ``FastRoutes``; call before the
    other middleware is added, so this one is the innermost."""
    app.router.routes[:0] = routes
    app.add_middleware(FastRoutes, routes=list(routes))


async def _never(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError("only requests for a FastRoute take the short way in")


class ServiceApp(FastAPI):
    """The FastAPI app, with a short way in for the ``FastRoute`` requests.

    Such a request goes through the app's own middleware (``add_middleware``'s, the same classes in the same
    order, ``FastRoutes`` innermost) under Starlette's ``ServerErrorMiddleware`` with the app's handler of
    ``Exception``, as through the whole app, but not through the layers FastAPI puts around them (its telemetry
    wrapper and exception telemetry, its own body limit, which a request here never sets): each cost a coroutine
    and a ``send`` wrapper a request (README, "Where the API's CPU went"). With FastAPI's telemetry on (tracing,
    ``OTEL_INSTRUMENTATION``), whose server span a request's trace starts from, every request takes the whole
    way. ``short_way`` turns it on once the middleware is in place.
    """

    _short_way: ASGIApp | None = None
    _short_keys: frozenset[tuple[str, str]] = frozenset()

    def short_way(self) -> None:
        from starlette.middleware.errors import ServerErrorMiddleware

        chain: ASGIApp = _never
        for middleware in reversed(self.user_middleware):
            cls, args, kwargs = middleware
            chain = cls(chain, *args, **kwargs)
            if isinstance(chain, FastRoutes):
                self._short_keys = frozenset(chain.keys())
        self._short_way = ServerErrorMiddleware(chain, handler=self.exception_handlers.get(Exception))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        short_way = self._short_way
        if (
            short_way is not None
            and scope["type"] == "http"
            and (scope["method"], route_path(scope)) in self._short_keys
            and not self.root_path
        ):
            scope["app"] = self
            await short_way(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
