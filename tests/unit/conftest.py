"""A real redis-server for the few unit tests that need what fakeredis lacks (INFO, which arq and the reply reader
ask for)."""

import pytest

from tests.stack import free_port, start_redis, stop


@pytest.fixture
def redis_url(tmp_path):
    port = free_port()
    server = start_redis(port, tmp_path)
    yield f"redis://127.0.0.1:{port}/0"
    stop(server)
