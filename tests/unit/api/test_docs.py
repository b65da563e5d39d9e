"""The docs page loads only what the server itself serves (api/docs.py), in-process over fakeredis."""

import re

import fakeredis
import httpx
import pytest

from api.main import create_app
from shared.settings import Settings
from tests.fakes import fake_redis_factory

ASSETS = {
    "/docs/assets/swagger-ui-bundle.js": "javascript",
    "/docs/assets/swagger-ui.css": "text/css",
    "/docs/assets/favicon.png": "image/png",
}


@pytest.fixture(params=[[], ["sk-docs-0123456789"]], ids=["open", "with-keys"])
async def client(request):
    """Without keys and with them: the docs page and its assets need none either way."""
    settings = Settings(_env_file=None, embed_models=["fake-model"], api_keys=request.param)
    app = create_app(settings, redis_factory=fake_redis_factory(fakeredis.FakeServer()))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client,
    ):
        yield client


def referenced_urls(html: str) -> list[str]:
    """Every URL the page loads: its src and href attributes, the schema's url and the OAuth2 redirect."""
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    urls += re.findall(r"""\burl: *'([^']+)'""", html)
    urls += re.findall(r"""window\.location\.origin \+ '([^']+)'""", html)
    return urls


async def test_the_docs_page_references_only_local_urls(client):
    response = await client.get("/docs")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    urls = referenced_urls(html)
    assert {"/openapi.json", "/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"} <= set(urls)
    assert all(url == "/openapi.json" or url.startswith("/docs/") for url in urls), urls
    assert not re.search(r"https?:|//[a-z]", html, re.I)  # nothing absolute or protocol-relative anywhere
    for url in urls:
        assert (await client.get(url)).status_code == 200, url


async def test_swagger_ui_has_no_online_validator(client):
    assert '"validatorUrl": null' in (await client.get("/docs")).text


@pytest.mark.parametrize(("path", "kind"), ASSETS.items())
async def test_the_assets_are_served_with_their_content_types(client, path, kind):
    response = await client.get(path)
    assert response.status_code == 200 and kind in response.headers["content-type"]
    assert len(response.content) > 1000


async def test_the_oauth2_redirect_page_is_served(client):
    response = await client.get("/docs/oauth2-redirect")
    assert response.status_code == 200 and "oauth2" in response.text and "http" not in response.text


async def test_no_redoc_and_no_docs_routes_in_the_schema(client):
    for path in ("/redoc", "/docs/redoc"):  # ReDoc would load its logo from a CDN
        assert (await client.get(path)).status_code in (401, 404)
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert paths and not [path for path in paths if path.startswith("/docs")]


async def test_under_a_root_path_the_page_points_below_it():
    """uvicorn --root-path /embed: the page's URLs carry the prefix, and the assets are found under it."""
    settings = Settings(_env_file=None, embed_models=["fake-model"])
    app = create_app(settings, redis_factory=fake_redis_factory(fakeredis.FakeServer()))
    transport = httpx.ASGITransport(app=app, root_path="/embed")
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        urls = referenced_urls((await client.get("/embed/docs")).text)
        assert "/embed/openapi.json" in urls and all(url.startswith("/embed/") for url in urls), urls
        assert (await client.get("/embed/docs/assets/swagger-ui.css")).status_code == 200
