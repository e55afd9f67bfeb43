"""A library call computes with numpy's transparent-huge-page advice off and leaves it as it
found it (onnxinit.allocator.huge_pages_unadvised, through propagate.single_threaded_blas):
page faults in advised arrays compacted memory on the spot (Swin-T's analyze in a fresh
process: 0.3-1.6 s of system CPU with the advice, 0.5-0.75 s without). Checked by numpy's own
switch, read inside the propagation's nodes and after the call."""

from __future__ import annotations

import numpy as np
import pytest

import onnxinit.propagate as propagate_module
from onnxinit import analyze
from onnxinit.allocator import huge_pages_unadvised

_switch = getattr(np._core.multiarray, "_set_madvise_hugepage", None)
pytestmark = pytest.mark.skipif(_switch is None, reason="numpy has no huge-page switch")


def _advice() -> bool:
    """numpy's current advice, read by setting it back."""
    current = _switch(True)
    _switch(current)
    return bool(current)


@pytest.mark.parametrize("before", [True, False])
def test_propagation_advises_no_huge_pages_and_restores_the_setting(monkeypatch, before):
    monkeypatch.delenv("NUMPY_MADVISE_HUGEPAGE", raising=False)
    seen = []
    original = propagate_module.propagate_node

    def probe(*args):
        seen.append(_advice())
        return original(*args)

    monkeypatch.setattr(propagate_module, "propagate_node", probe)
    previous = _switch(before)
    try:
        analyze("sample_models/small_cnn.onnx", batch_size=2)
        after = _advice()
    finally:
        _switch(previous)
    assert seen and set(seen) == {False}
    assert after is before


def test_blocks_nest_and_a_users_choice_stands(monkeypatch):
    monkeypatch.delenv("NUMPY_MADVISE_HUGEPAGE", raising=False)
    previous = _switch(True)
    try:
        with huge_pages_unadvised():
            with huge_pages_unadvised():
                assert _advice() is False
            assert _advice() is False
        assert _advice() is True
        monkeypatch.setenv("NUMPY_MADVISE_HUGEPAGE", "1")
        with huge_pages_unadvised():
            assert _advice() is True
    finally:
        _switch(previous)
