"""Many models at once: ``check``, ``analyze`` and ``rescale`` over a model zoo or the candidates
of a neural-architecture search, in local worker processes or on a Ray cluster.

::

    from onnxinit.batch import rescale_many
    for result in rescale_many(paths, "autoinit", jobs=2, timeout=60):
        print(result.index, result.model, result.status, result.error or result.payload["output"])

See :mod:`onnxinit.batch.api` (the functions), :mod:`onnxinit.batch.engine` (how they run),
:mod:`onnxinit.batch.jsonl` (``--jsonl`` and ``--resume``) and the README's "Many models".
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .api import analyze_many, check_many, rescale_many
    from .engine import in_order, run_many
    from .paths import find_models
    from .results import Result, exit_status

# public name -> the submodule defining it, imported on first use (PEP 562): the command line
# imports ``onnxinit.batch.paths`` without the analysis and rescale machinery of ``api``
_EXPORTS = {"analyze_many": "api", "check_many": "api", "rescale_many": "api",
            "in_order": "engine", "run_many": "engine", "find_models": "paths",
            "Result": "results", "exit_status": "results"}

__all__ = ["Result", "analyze_many", "check_many", "exit_status", "find_models", "in_order",
           "rescale_many", "run_many"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
