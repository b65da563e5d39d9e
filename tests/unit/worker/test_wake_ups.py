import asyncio

from shared import keys
from worker import wake_ups
from worker.wake_ups import WakeUps


async def test_a_worker_looks_at_chunks_at_start_then_only_when_told():
    calls = WakeUps()
    assert calls.look_at_chunks()
    assert not calls.look_at_chunks()
    calls.heard(keys.SYNC_QUEUE.encode())
    assert calls.event.is_set()
    assert not calls.look_at_chunks()
    calls.heard(keys.CHUNK_QUEUE.encode())
    assert calls.look_at_chunks()
    assert not calls.look_at_chunks()
    calls.chunks_may_wait()
    assert calls.look_at_chunks()


async def test_a_message_heard_while_claiming_is_not_lost():
    calls = WakeUps()
    assert calls.look_at_chunks()  # the worker is about to read the chunk queue...
    calls.heard(keys.CHUNK_QUEUE.encode())  # ...and a chunk is enqueued after it read it
    assert calls.look_at_chunks()


async def test_chunks_are_looked_at_after_a_quiet_while(monkeypatch):
    monkeypatch.setattr(wake_ups, "IDLE_POLL_S", 0.02)
    calls = WakeUps()
    assert calls.look_at_chunks()
    assert not calls.look_at_chunks()
    await asyncio.sleep(0.03)
    assert calls.look_at_chunks()
