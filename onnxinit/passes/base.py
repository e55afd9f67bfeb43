"""What every model preparation declares: whether it edits the ModelProto it is given.

A pass is a plain function over an ``onnx.ModelProto`` decorated with :func:`model_pass`:

- ``in_place=True``: it edits the model it is given and returns None; callers pass a copy
  they own (never a user's model or ``ModelGraph.source``);
- ``in_place=False``: it leaves its input untouched and returns a new model (or information
  read from it).

The declaration is the same distinction onnx-ir's pass infrastructure makes (``in_place`` /
``changes_input``), kept here as an attribute and a registry so that ``-v`` logging and the
docs can list the passes and their timings.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("onnxinit.passes")


@dataclass(frozen=True)
class PassInfo:
    name: str
    in_place: bool
    summary: str  # the first line of the pass's docstring


PASSES: dict[str, PassInfo] = {}


def model_pass(*, in_place: bool) -> Callable[[Callable], Callable]:
    """Declare a model preparation (see the module docstring); its time is logged at DEBUG."""

    def declare(fn: Callable) -> Callable:
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        info = PassInfo(fn.__name__, in_place, summary)
        PASSES[fn.__name__] = info

        @functools.wraps(fn)
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                log.debug("pass %s: %.3f s", info.name, time.perf_counter() - start)

        run.pass_info = info
        return run

    return declare
