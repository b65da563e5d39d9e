"""The unit tests' Redis: fakeredis as the API and workers wrap it (``redis``), and a real redis-server for the few
tests that need what fakeredis lacks (``redis_url``: INFO, which arq and the reply reader ask for)."""

import fakeredis
import pytest

from tests.fakes import fake_redis_factory
from tests.stack import free_port, start_redis, stop


@pytest.fixture
async def redis():
    client = fake_redis_factory(fakeredis.FakeServer())(None)
    yield client
    await client.aclose()


@pytest.fixture
def redis_url(tmp_path):
    port = free_port()
    server = start_redis(port, tmp_path)
    yield f"redis://127.0.0.1:{port}/0"
    stop(server)
