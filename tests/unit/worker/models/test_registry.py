import asyncio

import pytest

from shared.errors import ErrorKind, ServiceError
from tests.fakes import FAKE_DIM, Loader, make_registry


async def test_concurrent_requests_share_one_load():
    loader = Loader()
    loader.release.clear()
    registry = make_registry(loader)
    waiters = [asyncio.create_task(registry.get("a")) for _ in range(5)]
    await asyncio.sleep(0.02)
    loader.release.set()
    models = await asyncio.wait_for(asyncio.gather(*waiters), 5)
    assert loader.calls == ["a"]
    assert len({id(m) for m in models}) == 1
    assert registry.loaded_names() == ["a"]
    await registry.close()


async def test_failed_load_fails_fast_afterwards_and_other_models_still_load():
    loader = Loader(failing={"bad"})
    registry = make_registry(loader)
    for _ in range(3):
        with pytest.raises(ServiceError) as info:
            await registry.get("bad")
        assert info.value.kind is ErrorKind.MODEL_NOT_FOUND
    assert loader.calls == ["bad"]
    assert (await registry.get("good")).name == "good"
    await registry.close()


async def test_unexpected_load_failure_does_not_leak_details():
    registry = make_registry(Loader())
    with pytest.raises(ServiceError) as info:
        await registry.get("crash")
    assert info.value.kind is ErrorKind.MODEL_UNAVAILABLE
    assert "secret" not in info.value.message


async def test_least_recently_used_idle_model_is_unloaded():
    registry = make_registry(Loader(), max_loaded=2)
    await registry.get("a")
    await registry.get("b")
    await registry.get("a")
    await registry.get("c")
    assert sorted(registry.loaded_names()) == ["a", "c"]
    await registry.close()


async def test_loaded_model_encodes_through_its_batcher():
    registry = make_registry(Loader())
    model = await registry.get("a")
    encoded = await asyncio.wait_for(model.batcher.submit([[1], [2]]), 5)
    assert encoded.vectors.shape == (2, FAKE_DIM)
    await registry.close()
