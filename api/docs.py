"""The documentation page, served without any network: FastAPI's own ``/docs`` loads Swagger UI from a public CDN,
so an air-gapped deployment would get a blank page. This one loads the copy of Swagger UI 5 that the
``fastapi-offline`` package ships, mounted under ``/docs/assets``.

There is no ReDoc page (FastAPI's ``/redoc``): ReDoc 2 loads its logo from its vendor's CDN whatever it is told.
Every path here starts with ``/docs``, which the auth layer (``api.auth.OPEN_ROUTES``) leaves open, as it does
``/openapi.json``; none of them is in the OpenAPI schema.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS = "/docs"
OAUTH2_REDIRECT = "/docs/oauth2-redirect"
ASSETS = "/docs/assets"
#: swagger-ui-bundle.js, swagger-ui.css and favicon.png (and ReDoc's script, unused)
ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"


def install(app: FastAPI) -> None:
    """Swagger UI at ``/docs``; the app is made with ``docs_url=None, redoc_url=None`` (FastAPI's CDN pages off)."""
    openapi_url = app.openapi_url
    if openapi_url is None:  # no schema, nothing to document
        return
    app.mount(ASSETS, StaticFiles(directory=ASSETS_DIR), name="docs-assets")

    @app.get(DOCS, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = _root(request)
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS}/favicon.png",
            oauth2_redirect_url=root + OAUTH2_REDIRECT,
            # no badge that would send the schema to validator.swagger.io
            swagger_ui_parameters={**(app.swagger_ui_parameters or {}), "validatorUrl": None},
        )

    @app.get(OAUTH2_REDIRECT, include_in_schema=False)
    async def swagger_ui_oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()


def _root(request: Request) -> str:
    """The prefix a proxy mounts the app under (``--root-path``), as FastAPI's own docs pages use it."""
    return str(request.scope.get("root_path", "")).rstrip("/")
