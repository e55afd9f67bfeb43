"""The unit of work: one model's command, run in the current process, as a :class:`Result`.

Every backend runs jobs through :func:`run`: the sequential loop in the CLI's own process, the
worker processes of ``--jobs``, and the tasks of ``--ray``. ``run`` never raises for a model:
an onnxinit error or a bug in the work becomes an ``error`` result with its message, so one bad
model cannot stop the others. With ``log_level`` set (a worker process), the ``onnxinit`` log
records of the job are collected into the result, for the caller to print in input order.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..errors import OnnxInitError
from .fingerprint import file_sha256
from .results import ERROR, OK, Result

log = logging.getLogger("onnxinit")

# work(model path, options) -> JSON-able payload; its "status", when present, becomes the
# result's (check's "passed"/"failed"), otherwise the status is "ok". An OnnxInitError the
# work raises gives the status of the function's ``error_status`` attribute (check's
# "unreadable"), else "error".
Work = Callable[[str, dict], dict]


@dataclass(frozen=True)
class Job:
    """One model to process: ``work`` (a module-level function, so that it pickles) applied to
    ``model`` with ``options``. ``sha256`` is the file's hash when the caller computed it;
    ``hash_file`` asks the worker to compute it (for the JSON Lines record)."""

    index: int
    model: str
    work: Work
    options: dict = field(default_factory=dict)
    command: str = ""
    key: str = ""
    sha256: str | None = None
    hash_file: bool = False
    log_level: int | None = None

    def result(self, status: str, **kwargs) -> Result:
        """A result of this job that it did not produce itself (timeout, crash, resumed)."""
        return Result(self.index, self.model, status, command=self.command, key=self.key,
                      sha256=self.sha256, **kwargs)


class _Collect(logging.Handler):
    def __init__(self, level: int, records: list[tuple[int, str]]):
        super().__init__(level)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.levelno, record.getMessage()))


@contextmanager
def _collected(level: int | None, records: list[tuple[int, str]]) -> Iterator[None]:
    """The ``onnxinit`` logger writes into ``records`` (at ``level``) instead of its handlers;
    nothing changes when ``level`` is None."""
    if level is None:
        yield
        return
    state = (log.level, list(log.handlers), log.propagate)
    log.setLevel(level)
    log.handlers[:] = [_Collect(level, records)]
    log.propagate = False
    try:
        yield
    finally:
        log.setLevel(state[0])
        log.handlers[:] = state[1]
        log.propagate = state[2]


def run(job: Job, *, reraise: bool = False) -> Result:
    """Run ``job`` here and now. ``reraise`` lets exceptions through (``--debug``)."""
    start = time.perf_counter()
    records: list[tuple[int, str]] = []
    sha256 = job.sha256
    with _collected(job.log_level, records):
        try:
            if sha256 is None and job.hash_file:
                sha256 = file_sha256(job.model)
            payload = job.work(job.model, job.options)
            status, error = payload.get("status", OK), None
        except OnnxInitError as exc:
            if reraise:
                raise
            payload, status, error = None, getattr(job.work, "error_status", ERROR), str(exc)
        except MemoryError as exc:
            if reraise:
                raise
            payload, status = None, ERROR
            error = (f"{job.model}: not enough memory ({exc}); use a smaller --batch-size or "
                     "input shape (--input-shape)")
        except Exception as exc:  # noqa: BLE001 - a bug on one model must not stop the batch
            if reraise:
                raise
            log.debug("%s: %s", job.model, traceback.format_exc())
            payload, status = None, ERROR
            if type(exc).__module__.startswith("onnxruntime"):
                # a method that runs the model (lsuv, gradinit, metainit, nio) on one that
                # onnxruntime has no kernel for (bfloat16 Gemm on the CPU): the model's limit
                message = " ".join(str(exc).split())[:300]
                error = (f"{job.model}: onnxruntime cannot run this model, which this command "
                         f"needs: {message}")
            else:
                error = (f"{job.model}: internal error ({type(exc).__name__}: {exc}); "
                         "run this model alone with --debug for the traceback")
    return Result(job.index, job.model, status, payload, error, time.perf_counter() - start,
                  job.command, job.key, sha256, log=records)
