"""The OpenAPI document, as this deployment answers: what FastAPI derives from the routes, completed with what
the middleware and the settings add.

- Every error a route's own code can raise is declared on the route (``api.errors``' tables per kind of route);
  here are added those of the middleware: 401 where a key is needed (with the bearer security scheme), 413 where
  a body is read, 400 where parameters are validated (the server's validation errors are 400s, never 422s).
- Request schemas built from pydantic models (``model_json_schema``) carry their own ``$defs``; they move to
  ``components/schemas`` so that every ``$ref`` resolves.
- TEI's ``/rerank`` may leave ``model`` out only where ``DEFAULT_RERANK_MODEL`` names one; TEI's ``/tokenize``,
  ``/decode`` and ``/embed_sparse`` only where the deployment serves exactly one model
  (``api.tokenize.schemas.sole_model``).
- Token ids are bounded by what ``TOKEN_IDS`` reads them as: OpenAI's cl100k_base ids, or the model's own (whose
  vocabulary the API does not know; the worker refuses an id outside it).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.auth import OpenPaths
from api.embeddings.schemas import TOKEN_ID_MARK
from api.errors import ERROR_TABLE, error_description
from api.tokenize.schemas import sole_model
from shared.errors import ErrorKind
from shared.settings import Settings
from shared.token_ids import CL100K_MAX_TOKEN_ID, CL100K_UNUSED_IDS, MAX_TOKEN_ID

_SECURITY_SCHEME = "apiKey"
_ERROR_BODY_REF = {"$ref": "#/components/schemas/ErrorBody"}
#: FastAPI's own 422 body, which this server never answers
_UNUSED_COMPONENTS = ("HTTPValidationError", "ValidationError")


def install(app: FastAPI, settings: Settings, *, keys_required: bool) -> None:
    """Serve this deployment's document at ``app.openapi_url``; it is built once, on first request."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(app, settings, keys_required=keys_required)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def document(app: FastAPI, settings: Settings, *, keys_required: bool) -> dict[str, Any]:
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas: dict[str, Any] = doc.setdefault("components", {}).setdefault("schemas", {})
    _hoist_definitions(doc, schemas)
    _bound_token_ids(doc, settings)
    if settings.default_rerank_model is None:
        _require_model(doc["paths"]["/rerank"]["post"]["requestBody"]["content"]["application/json"]["schema"])
    if sole_model(settings) is None:
        for path in ("/tokenize", "/decode", "/embed_sparse"):
            _require_model(doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"])
    opened = OpenPaths(settings.protect_metrics)
    for path, operations in doc["paths"].items():
        for operation in operations.values():
            responses: dict[str, Any] = operation["responses"]
            responses.pop("422", None)
            if operation.get("parameters"):
                _declare(responses, ErrorKind.INVALID_REQUEST)
            if "requestBody" in operation:
                _declare(responses, ErrorKind.PAYLOAD_TOO_LARGE)
            if keys_required:
                is_open = path in opened
                operation["security"] = [] if is_open else [{_SECURITY_SCHEME: []}]
                if not is_open:
                    _declare(responses, ErrorKind.AUTHENTICATION)
            operation["responses"] = dict(sorted(responses.items()))
    for name in _UNUSED_COMPONENTS:
        schemas.pop(name, None)
    if keys_required:
        doc["components"]["securitySchemes"] = {
            _SECURITY_SCHEME: {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer <key>`"}
        }
    return doc


def links(param: str, **operations: tuple[str, str]) -> dict[str, Any]:
    """OpenAPI ``links`` from an answer's ``id`` to the operations, by name, given as (method, path), that take it
    as ``param``: how clients (and the fuzzer's stateful phase) go from a created object to its routes."""
    return {
        name: {
            "operationRef": "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method.lower(),
            "parameters": {param: "$response.body#/id"},
        }
        for name, (method, path) in operations.items()
    }


def _declare(responses: dict[str, Any], kind: ErrorKind) -> None:
    """Add ``kind`` to the route's responses: to the entry of its status, or as a new one."""
    status = str(ERROR_TABLE[kind][0])
    entry = responses.get(status)
    if entry is None:
        responses[status] = {
            "description": error_description([kind.value]),
            "content": {"application/json": {"schema": _ERROR_BODY_REF}},
        }
    elif f"`{kind.value}`" not in entry["description"]:
        entry["description"] += f", `{kind.value}`"


def _hoist_definitions(doc: dict[str, Any], schemas: dict[str, Any]) -> None:
    """Move every nested ``$defs`` into ``schemas`` (a name taken by another shape gets a ``Request`` suffix)
    and point the references at them."""
    renamed: dict[str, str] = {}

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            for name, definition in node.pop("$defs", {}).items():
                collect(definition)
                target = name if schemas.get(name, definition) == definition else f"{name}Request"
                schemas[target] = definition
                renamed[f"#/$defs/{name}"] = f"#/components/schemas/{target}"
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    def point(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str) and node["$ref"] in renamed:
                node["$ref"] = renamed[node["$ref"]]
            for value in node.values():
                point(value)
        elif isinstance(node, list):
            for value in node:
                point(value)

    collect(doc)
    point(doc)


def _bound_token_ids(node: Any, settings: Settings) -> None:
    if isinstance(node, dict):
        if node.pop(TOKEN_ID_MARK, False):
            if settings.token_ids == "openai":
                node["maximum"] = CL100K_MAX_TOKEN_ID
                node["not"] = {"enum": sorted(CL100K_UNUSED_IDS)}
                node["description"] = "An id of OpenAI's cl100k_base vocabulary."
            else:
                node["maximum"] = MAX_TOKEN_ID
                node["description"] = "An id of the model's vocabulary (the worker refuses one outside it)."
        for value in node.values():
            _bound_token_ids(value, settings)
    elif isinstance(node, list):
        for value in node:
            _bound_token_ids(value, settings)


def _require_model(schema: dict[str, Any]) -> None:
    schema["required"] = [*schema.get("required", []), "model"]
    schema["properties"]["model"] = next(
        option for option in schema["properties"]["model"]["anyOf"] if option.get("type") == "string"
    )
