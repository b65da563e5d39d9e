import asyncio

from shared.coalesce import Coalescer


def doubling(flushed: list):
    async def flush(batch):
        flushed.append([item for item, _ in batch])
        for item, future in batch:
            future.set_result(item * 2)

    return flush


async def test_a_lone_item_is_flushed_alone():
    flushed: list = []
    coalescer = Coalescer(doubling(flushed), "test")
    assert await coalescer.add(3) == 6
    assert flushed == [[3]]


async def test_items_added_during_a_flush_go_together_in_the_next():
    flushed = []
    gate = asyncio.Event()

    async def flush(batch):
        flushed.append([item for item, _ in batch])
        await gate.wait()
        for item, future in batch:
            future.set_result(item)

    coalescer = Coalescer(flush, "test")
    first = coalescer.add(0)
    await asyncio.sleep(0)
    later = [coalescer.add(i) for i in range(1, 5)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(first, *later) == [0, 1, 2, 3, 4]
    assert flushed == [[0], [1, 2, 3, 4]]


async def test_a_failed_flush_reaches_every_waiter_and_the_next_flush_works():
    calls = 0

    async def flush(batch):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("down")
        for item, future in batch:
            future.set_result(item)

    coalescer = Coalescer(flush, "test")
    results = await asyncio.gather(coalescer.add(1), coalescer.add(2), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert await coalescer.add(3) == 3


async def test_a_future_given_by_the_caller_is_the_one_settled_and_done_ones_are_skipped():
    flushed: list = []
    coalescer = Coalescer(doubling(flushed), "test")
    mine = asyncio.get_running_loop().create_future()
    gone = asyncio.get_running_loop().create_future()
    gone.cancel()
    assert coalescer.add(5, mine) is mine
    coalescer.add(7, gone)
    assert await mine == 10
    assert flushed == [[5]]
