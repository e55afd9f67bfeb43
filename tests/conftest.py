"""Shared test set-up."""

from __future__ import annotations

import logging
import os

import pytest

# a rule's unexpected error fails the test instead of falling back quietly (onnxinit/strict.py);
# set here, before any test runs, so that subprocesses (the CLI) inherit it
os.environ.setdefault("ONNXINIT_STRICT", "1")


@pytest.fixture(autouse=True)
def _restore_onnxinit_logger():
    """CLI runs in-process configure the ``onnxinit`` logger (``-q`` raises its level to
    ERROR); restore it so one test's flags never silence another test's log checks."""
    log = logging.getLogger("onnxinit")
    state = (log.level, list(log.handlers), log.propagate)
    yield
    log.setLevel(state[0])
    log.handlers[:] = state[1]
    log.propagate = state[2]
