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

from .api import analyze_many, check_many, rescale_many
from .engine import in_order, run_many
from .paths import find_models
from .results import Result, exit_status

__all__ = ["Result", "analyze_many", "check_many", "exit_status", "find_models", "in_order",
           "rescale_many", "run_many"]
