"""Strict mode: a rule's failure raised, where the analysis would otherwise fall back quietly.

The analysis never stops because one rule fails. A rule that raises is measured instead
(:mod:`onnxinit.propagate`, :mod:`onnxinit.backward`), and a refinement that raises (a
correlation, an energy, a token field) leaves the simpler estimate it refines. That is right for
a user, whose model must still be analysed, but it hides bugs: a mistake in a refinement moves
predictions without failing anything.

A rule that cannot handle a node says so with its own exception type (``RuleError``); anything
else (``ValueError``, ``IndexError``, ``TypeError``, ...) out of a rule is a bug. With the
environment variable ``ONNXINIT_STRICT=1`` (the test suite sets it) those are raised at the
fallback, so tests see them; without it they are logged at debug level and the fallback is taken.
"""

from __future__ import annotations

import logging
import os

ENVIRONMENT_VARIABLE = "ONNXINIT_STRICT"
log = logging.getLogger(__name__)


def strict() -> bool:
    """Whether fallbacks on unexpected errors raise (``ONNXINIT_STRICT`` set and not ``0``)."""
    return os.environ.get(ENVIRONMENT_VARIABLE, "") not in ("", "0")


def fall_back(exc: BaseException, expected: tuple[type[BaseException], ...] = ()) -> None:
    """Called in an ``except`` clause before taking a fallback: re-raises ``exc`` in strict mode
    unless it is one of the ``expected`` types (a rule's own "cannot handle this")."""
    if isinstance(exc, expected):
        return
    if strict():
        raise exc
    log.debug("falling back after %s: %s", type(exc).__name__, exc, exc_info=exc)
