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

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:
    from .api import analyze_many, check_many, rescale_many
    from .engine import in_order, run_many
    from .paths import find_models
    from .results import Result, exit_status

__all__ = ["Result", "analyze_many", "check_many", "exit_status", "find_models", "in_order",
           "rescale_many", "run_many"]

# imported on first use (PEP 562): the command line imports ``onnxinit.batch.paths`` without
# the analysis and rescale machinery of ``api``
__getattr__, __dir__ = lazy_exports(__name__, {
    "analyze_many": "api", "check_many": "api", "rescale_many": "api", "in_order": "engine",
    "run_many": "engine", "find_models": "paths", "Result": "results",
    "exit_status": "results"}, __all__)
