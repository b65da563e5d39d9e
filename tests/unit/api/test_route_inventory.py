"""Every route the app serves, walked under API keys. The inventory comes from the app itself (FastAPI's routes,
the fast routes and mounts), never a hand-kept list, so a route added without a key, or one that shows another
key's object, fails here with no edit to this file.

- every route but the open ones (``api.auth.OPEN_ROUTES``): no key, a wrong key and a malformed header are 401s
  with ``WWW-Authenticate: Bearer``; a good key is not;
- every route that names an object (a job, file or batch, their results, contents, cancel and delete) is a 404
  under another key, and leaves the object as it was.
"""

import re

import httpx
import pytest
from fastapi.routing import iter_route_contexts
from starlette.routing import Mount

from api.auth import OpenPaths, open_routes
from shared.settings import Settings
from tests.fakes import served_app

OWNER_KEY = "sk-owner-0123456789"
OTHER_KEY = "sk-other-9876543210"
BAD_HEADERS = [{}, {"Authorization": "Bearer not-a-key"}, {"Authorization": OWNER_KEY}, {"Authorization": "Basic x"}]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def inventory(app) -> list[tuple[str, str]]:
    """(method, path template) of every route the app answers; a mount is probed at a path below it."""
    found: set[tuple[str, str]] = set()
    for route in iter_route_contexts(app.routes):
        if isinstance(route.original_route, Mount):
            found.add(("GET", route.path + "/probe"))
        else:
            found |= {(method, route.path) for method in route.methods or () if method != "HEAD"}
    return sorted(found)


@pytest.fixture
async def keyed():
    settings = Settings(_env_file=None, embed_models=["fake-model"], api_keys=[OWNER_KEY, OTHER_KEY])
    async with served_app(settings) as served:
        yield served


async def owned_objects(client: httpx.AsyncClient) -> dict[str, str]:
    """One object of each kind, made with the owner's key: the value of each path parameter that names one."""
    owner = bearer(OWNER_KEY)
    job = await client.post("/v1/embeddings/jobs", json={"model": "fake-model", "input": ["a", "b"]}, headers=owner)
    line = (
        b'{"custom_id": "1", "method": "POST", "url": "/v1/embeddings", "body": {"model": "fake-model", "input": "a"}}'
    )
    upload = await client.post(
        "/v1/files", files={"file": ("in.jsonl", line + b"\n")}, data={"purpose": "batch"}, headers=owner
    )
    batch_body = {"input_file_id": upload.json()["id"], "endpoint": "/v1/embeddings", "completion_window": "24h"}
    batch = await client.post("/v1/batches", json=batch_body, headers=owner)
    assert job.status_code == 202 and upload.status_code == 200 and batch.status_code == 200
    return {"job_id": job.json()["id"], "file_id": upload.json()["id"], "batch_id": batch.json()["id"]}


def filled(path: str, objects: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in objects, f"a new path parameter {{{name}}}: make one of its objects in owned_objects"
        return objects[name]

    return re.sub(r"\{(\w+)(?::\w+)?\}", value, path)


async def test_every_route_but_the_open_ones_needs_a_valid_key(keyed):
    app, client = keyed
    objects = await owned_objects(client)
    routes = inventory(app)
    opened = OpenPaths(protect_metrics=False)
    served_without_key, refused_with_key, closed_open_routes = [], [], []
    for method, template in routes:
        path = filled(template, objects)
        is_open = path in opened
        for headers in BAD_HEADERS:
            response = await client.request(method, path, headers=headers, json={})
            if is_open and response.status_code == 401:
                closed_open_routes.append((method, template))
            refused = response.status_code == 401 and response.headers.get("www-authenticate") == "Bearer"
            if not is_open and not (refused and response.json()["error"]["code"] == "invalid_api_key"):
                served_without_key.append((method, template, headers, response.status_code))
        if (await client.request(method, path, headers=bearer(OWNER_KEY), json={})).status_code == 401:
            refused_with_key.append((method, template))
    open_templates = {template for _, template in routes if template in opened}
    print(f"\n{len(routes)} routes (method and path) in the inventory; open: {sorted(open_templates)}")
    assert not served_without_key
    assert not refused_with_key
    assert not closed_open_routes
    assert len(routes) >= 25
    probes_and_docs = {"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/docs/assets/probe"}
    assert open_templates == {*probes_and_docs, "/metrics"}


async def test_another_keys_objects_are_not_found_and_stay_untouched(keyed):
    app, client = keyed
    objects = await owned_objects(client)
    owner, other = bearer(OWNER_KEY), bearer(OTHER_KEY)
    views = {
        "job": f"/v1/embeddings/jobs/{objects['job_id']}",
        "file": f"/v1/files/{objects['file_id']}",
        "file content": f"/v1/files/{objects['file_id']}/content",
        "batch": f"/v1/batches/{objects['batch_id']}",
    }
    before = {name: (await client.get(path, headers=owner)).content for name, path in views.items()}
    naming = [(method, template) for method, template in inventory(app) if "{" in template]
    leaks = []
    for method, template in naming:
        response = await client.request(method, filled(template, objects), headers=other, json={})
        if response.status_code != 404 or response.json()["error"]["code"] != "not_found":
            leaks.append((method, template, response.status_code))
    assert not leaks
    assert len(naming) >= 9
    for name, path in views.items():
        response = await client.get(path, headers=owner)
        assert response.status_code == 200, name
        if name != "job":  # a job's progress may move on; it must still be there, and not cancelled
            assert response.content == before[name], name
        else:
            assert response.json()["status"] in ("queued", "in_progress", "completed")


async def test_metrics_are_open_unless_protected():
    assert "/metrics" in open_routes(protect_metrics=False)
    assert "/metrics" not in open_routes(protect_metrics=True)
