import gc
import weakref
from collections.abc import Iterator

import pytest

from shared import heap


@pytest.fixture(autouse=True)
def collector_restored() -> Iterator[None]:
    thresholds = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def _tracked(obj: object) -> bool:
    """Whether ``obj`` is in one of the collector's generations (a frozen object is in none)."""
    return any(tracked is obj for tracked in gc.get_objects())


def test_settle_freezes_what_the_process_holds_and_collects_the_young_less_often() -> None:
    held: list[object] = []
    assert _tracked(held)

    heap.settle()

    assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, *heap.OLDER_THRESHOLDS)
    assert gc.get_freeze_count() > 0
    assert not _tracked(held)
    made_after: list[object] = []
    assert _tracked(made_after)


def test_settle_collects_cycles_before_freezing_them_for_ever() -> None:
    class Node:
        pass

    cycle = Node()
    cycle.self = cycle  # type: ignore[attr-defined]
    alive = weakref.ref(cycle)
    del cycle
    assert alive() is not None  # reference counting alone never frees a cycle

    heap.settle()

    assert alive() is None
