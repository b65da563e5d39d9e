"""API keys: when any are configured, every route needs ``Authorization: Bearer <key>``, except the few in
``OPEN_ROUTES``, each with its reason. A route added later is protected without touching this module. Keys are
kept and compared as SHA-256 digests, in constant time, and never logged.

The digest's first 16 hex characters name the key's owner: asynchronous jobs, files and batches belong to it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import error_response
from api.http import route_path
from shared.errors import ErrorKind
from shared.settings import Settings

log = logging.getLogger(__name__)

#: the owner of every job while no keys are configured
ANONYMOUS = "anonymous"

#: the only routes answered without a key; an entry ending in "/" opens every path below it
OPEN_ROUTES: dict[str, str] = {
    "/healthz": "liveness probe: orchestrators call it without credentials",
    "/readyz": "readiness probe: orchestrators and load balancers call it without credentials",
    "/openapi.json": "the API's contract, which says which routes need a key; it holds no data",
    "/docs": "the interactive documentation page, rendered from /openapi.json; it holds no data",
    "/docs/": "the documentation page's own scripts and stylesheets, served locally",
}
#: open unless ``PROTECT_METRICS``: Prometheus scrapers are often set up without credentials
METRICS_ROUTE = "/metrics"


def open_routes(protect_metrics: bool) -> dict[str, str]:
    """The routes answered without a key, and why."""
    if protect_metrics:
        return dict(OPEN_ROUTES)
    return {**OPEN_ROUTES, METRICS_ROUTE: "Prometheus scrapes it without a key (PROTECT_METRICS=true closes it)"}


class OpenPaths:
    """``path in OpenPaths(...)``: whether a path is answered without a key."""

    def __init__(self, protect_metrics: bool) -> None:
        opened = open_routes(protect_metrics)
        self._paths = frozenset(path for path in opened if not path.endswith("/"))
        self._prefixes = tuple(path for path in opened if path.endswith("/"))

    def __contains__(self, path: str) -> bool:
        return path in self._paths or path.startswith(self._prefixes)


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    def __init__(self, digests: set[bytes]) -> None:
        self._digests = digests

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        digests = {digest(key.get_secret_value()) for key in settings.api_keys}
        if settings.api_key_hashes_file is not None:
            for line in settings.api_key_hashes_file.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    digests.add(bytes.fromhex(line))
        return cls(digests)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def owner_of(self, presented: str) -> str | None:
        """The owner name of a valid key, else None; every known digest is compared, whatever matches."""
        candidate = digest(presented)
        matched = False
        for known in self._digests:
            matched |= hmac.compare_digest(candidate, known)
        return candidate.hex()[:16] if matched else None


class ApiKeyAuth:
    """ASGI middleware: refuse every route but the open ones without a valid key (401, ``WWW-Authenticate:
    Bearer``); record the caller as its owner. Unknown paths are refused too, so the routes are not probed
    without a key."""

    def __init__(self, app: ASGIApp, ring: KeyRing, protect_metrics: bool) -> None:
        self._app = app
        self._ring = ring
        self._open = OpenPaths(protect_metrics)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        owner: str | None = ANONYMOUS
        if self._ring.enabled and route_path(scope) not in self._open:
            owner = self._owner(scope)
            if owner is None:
                response = error_response(ErrorKind.AUTHENTICATION, "missing or invalid API key")
                response.headers["www-authenticate"] = "Bearer"
                await response(scope, receive, send)
                return
        scope.setdefault("state", {})["owner"] = owner
        await self._app(scope, receive, send)

    def _owner(self, scope: Scope) -> str | None:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, key = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and key:
                    return self._ring.owner_of(key.strip())
        return None


def owner_of(state: object) -> str:
    return str(getattr(state, "owner", ANONYMOUS))
