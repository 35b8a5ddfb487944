"""consumer.service.settle_heap: the start's objects leave the collector's scans; garbage
is not frozen with them, and what is made later is still collected."""

from __future__ import annotations

import gc
import weakref

import pytest

from consumer.service import settle_heap


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector frees it


def test_settle_heap_frees_the_starts_garbage_freezes_the_rest_and_still_collects_later():
    kept = Node()
    dropped = Node()
    dropped_ref = weakref.ref(dropped)
    del dropped
    try:
        settle_heap()
        assert dropped_ref() is None  # collected first, not frozen forever
        assert gc.get_freeze_count() > 0
        assert all(o is not kept for o in gc.get_objects())  # out of every generation
        later = Node()
        later_ref = weakref.ref(later)
        del later
        gc.collect()
        assert later_ref() is None
    finally:
        gc.unfreeze()


def test_a_collector_pause_spans_holds_collects_after_its_bound_and_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from consumer import apply

    clock = [100.0]
    monkeypatch.setattr(apply.time, "monotonic", lambda: clock[0])
    pause = apply.CollectorPause(bound=60.0)
    assert gc.isenabled()

    def dropped_cycle() -> weakref.ref:
        node = Node()
        return weakref.ref(node)  # the node is garbage now, freed only by a collection

    try:
        pause.hold()
        assert not gc.isenabled()
        early = dropped_cycle()
        # Objects kept alive: an enabled collector would have run (its young generation's
        # count past the threshold) and freed `early`.
        kept = [Node() for _ in range(3 * gc.get_threshold()[0])]
        clock[0] += 30
        pause.hold()  # the next window: still paused, since the first hold
        assert not gc.isenabled() and early() is not None
        del kept
        later = dropped_cycle()
        clock[0] += 31  # past the bound: what was dropped meanwhile is collected
        pause.hold()
        assert early() is None and later() is None
        assert not gc.isenabled()  # and the pause goes on
        last = dropped_cycle()
        clock[0] += 59  # the bound counts from that collection
        pause.hold()
        assert last() is not None
        clock[0] += 1
        pause.hold()
        assert last() is None
        pause.release()
        assert gc.isenabled()
        pause.release()  # nothing held: nothing to do
        assert gc.isenabled()
        gc.disable()  # someone else's pause: neither ended nor taken over
        pause.hold()
        pause.release()
        assert not gc.isenabled()
    finally:
        monkeypatch.undo()
        gc.enable()
