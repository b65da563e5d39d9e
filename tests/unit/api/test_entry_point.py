"""``python -m api``: how many API processes it runs, and that it hands them to uvicorn as an import string."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest

import api.__main__ as entry
from api.fast_route import ServiceApp
from api.main import create_app
from api.metrics import request_id
from shared.settings import Settings
from tests.fakes import fake_redis_factory


@pytest.mark.parametrize(("api_workers", "cpus", "processes"), [(1, 8, 1), (3, 1, 3), (0, 2, 2), (0, 64, 4), (0, 1, 1)])
def test_api_workers_zero_means_the_cpus_the_api_may_use_at_most_four(monkeypatch, api_workers, cpus, processes):
    monkeypatch.setattr(entry, "cpu_budget", lambda: cpus)
    assert entry.api_processes(api_workers) == processes


def test_the_entry_point_runs_the_app_factory_with_the_settings_processes(monkeypatch):
    ran: dict[str, Any] = {}
    monkeypatch.setattr(entry.uvicorn, "run", lambda app, **kwargs: ran.update(app=app, **kwargs))
    monkeypatch.setattr(entry, "get_settings", lambda: Settings(_env_file=None, api_workers=2))
    entry.main(["--host", "0.0.0.0", "--port", "9000"])
    assert ran == {
        "app": "api.main:create_app",
        "factory": True,
        "host": "0.0.0.0",
        "port": 9000,
        "workers": 2,
        "access_log": False,
    }


def test_request_ids_are_32_hex_digits_and_distinct():
    ids = {request_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_the_short_way_in_is_off_while_fastapis_telemetry_is_on():
    """With tracing on, every request takes the whole way: FastAPI's server span starts the trace."""
    app = create_app(
        Settings(_env_file=None, otel_instrumentation=True), redis_factory=fake_redis_factory(fakeredis.FakeServer())
    )
    assert isinstance(app, ServiceApp) and app._short_way is None
    app = create_app(Settings(_env_file=None), redis_factory=fake_redis_factory(fakeredis.FakeServer()))
    assert app._short_way is not None and ("POST", "/v1/embeddings") in app._short_keys
