import asyncio

import pytest

from shared.coalesce import Coalescer


async def test_a_lone_call_is_flushed_alone():
    flushed = []

    async def flush(items):
        flushed.append(items)
        return [item * 2 for item in items]

    coalescer = Coalescer(flush)
    assert await coalescer.submit(3) == 6
    assert flushed == [[3]]


async def test_calls_made_during_a_flush_go_together_in_the_next():
    flushed = []
    gate = asyncio.Event()

    async def flush(items):
        flushed.append(items)
        await gate.wait()
        return items

    coalescer = Coalescer(flush)
    first = asyncio.create_task(coalescer.submit(0))
    await asyncio.sleep(0)
    later = [asyncio.create_task(coalescer.submit(i)) for i in range(1, 5)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(first, *later) == [0, 1, 2, 3, 4]
    assert flushed == [[0], [1, 2, 3, 4]]


async def test_a_failed_flush_reaches_every_caller_and_the_next_flush_works():
    calls = 0

    async def flush(items):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("down")
        return items

    coalescer = Coalescer(flush)
    results = await asyncio.gather(coalescer.submit(1), coalescer.submit(2), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert await coalescer.submit(3) == 3


async def test_result_count_must_match():
    async def flush(items):
        return []

    with pytest.raises(ValueError):
        await Coalescer(flush).submit(1)
