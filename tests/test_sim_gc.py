"""The simulator pauses the cyclic garbage collector while it runs and puts it back as it was."""

from __future__ import annotations

import gc

from memsim.sim.program import paused_gc


def test_paused_gc_restores_the_collector_and_nests():
    assert gc.isenabled()
    with paused_gc():
        assert not gc.isenabled()
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner pause must not re-enable inside the outer one
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0  # nothing left frozen


def test_paused_gc_leaves_a_disabled_collector_disabled():
    gc.disable()
    try:
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_paused_gc_restores_the_collector_after_an_error():
    try:
        with paused_gc():
            raise ValueError("boom")
    except ValueError:
        pass
    assert gc.isenabled()
