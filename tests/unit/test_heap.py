"""consumer.service.settle_heap: the start's objects leave the collector's scans; garbage
is not frozen with them, and what is made later is still collected."""

from __future__ import annotations

import gc
import weakref

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
