"""``--jobs N`` and ``--timeout``: each model in a process of its own, at most N at a time.

Why a process per model rather than a pool of long-lived workers: a per-model timeout must stop
a model stuck in C code (protobuf parsing, onnxruntime, BLAS), which only killing its process
does. ``concurrent.futures.ProcessPoolExecutor`` cannot kill one task's worker (cancel only
stops tasks that have not started; a killed worker breaks the whole pool); a pool that replaces
killed workers is a scheduler of its own. A process per model makes every failure local:
killing it on timeout, noticing that it died (a segfault, the kernel's OOM killer), retrying it,
and leaving nothing behind from one model to the next (memory, caches, a corrupted state).

The processes come from a ``forkserver`` (``spawn`` where there is none): a clean server process
imports onnxinit and loads the rules once (:mod:`onnxinit.batch.preload`), and each model's
process is a fork of it, which costs milliseconds instead of the second an import takes, and
is safe (the server has no threads, unlike the parent with its progress bar). Results come back
through a pipe per process, so a process killed mid-write cannot corrupt another's result.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType

from .jobs import Job, run
from .results import CRASHED, TIMEOUT, Result

log = logging.getLogger("onnxinit")

PRELOAD = ["onnxinit.batch.preload"]


def cpu_count() -> int:
    """The cores this process may run on (``--jobs auto``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _main_imports() -> list[str]:
    """The modules the parent's main script imported (read from its globals).

    Every process that multiprocessing starts (fork aside) runs the parent's main script again
    before its target, as ``__mp_main__``: in a Ray worker that script imports all of Ray, in a
    NAS script perhaps torch, a second or more per model. With these modules preloaded in the
    forkserver, the script's imports find them loaded. (``set_forkserver_preload(["__main__"])``
    would do this, but Python before 3.13 never hands the server the main script's path.)"""
    names = set()
    for value in list(vars(sys.modules["__main__"]).values()):
        try:
            name = value.__name__ if isinstance(value, ModuleType) else value.__module__
        except AttributeError:
            continue
        if isinstance(name, str) and name in sys.modules and name not in ("__main__",
                                                                           "__mp_main__"):
            names.add(name)
    return sorted(names)


def _context():
    import multiprocessing  # here: the one-model path never pays for it

    try:
        context = multiprocessing.get_context("forkserver")
    except ValueError:  # Windows
        return multiprocessing.get_context("spawn")
    context.set_forkserver_preload(PRELOAD + _main_imports())
    return context


def _child(job: Job, conn) -> None:
    """A model's process: run the job, send the result, exit. Ctrl-C is the parent's to handle
    (it kills its processes), so the child ignores it instead of printing a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn.send(run(job))
    conn.close()


@contextmanager
def _sigint_deferred():
    """Hold Ctrl-C back while a process starts and is recorded: an interrupt inside
    ``Process.start()`` would leave a started process that the cleanup does not know of (the
    run then waits on it). The held signal is delivered when the block ends."""
    block = getattr(signal, "pthread_sigmask", None)  # not on Windows
    if block is None:
        yield
        return
    previous = block(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        block(signal.SIG_SETMASK, previous)


@dataclass
class _Running:
    process: object
    job: Job
    attempt: int
    started: float


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


def _receive(conn) -> Result | None:
    """The result a child sent, or None when it died before sending one."""
    try:
        return conn.recv() if conn.poll() else None
    except (EOFError, OSError):
        return None


def run_local(jobs: list[Job], workers: int, timeout: float | None = None,
              retries: int = 2) -> Iterator[Result]:
    """Run ``jobs`` in at most ``workers`` processes at once; results as they complete. A
    process running longer than ``timeout`` seconds is killed (result ``timeout``); one that
    dies is run again up to ``retries`` times, then reported ``crashed``. Stopping the
    iteration (or Ctrl-C) kills the processes still running."""
    from multiprocessing.connection import wait

    context = _context()
    queue = deque((job, 1) for job in jobs)
    running: dict[object, _Running] = {}  # the pipe's reading end -> its process
    try:
        while queue or running:
            while queue and len(running) < workers:
                job, attempt = queue.popleft()
                with _sigint_deferred():
                    reader, writer = context.Pipe(duplex=False)
                    process = context.Process(target=_child, args=(job, writer), daemon=True,
                                              name=f"onnxinit-{job.index}")
                    process.start()
                    writer.close()
                    running[reader] = _Running(process, job, attempt, time.monotonic())
            limit = None
            if timeout is not None:
                first = min(r.started for r in running.values())
                limit = max(0.0, first + timeout - time.monotonic())
            wait([*running, *(r.process.sentinel for r in running.values())], timeout=limit)
            now = time.monotonic()
            for reader, r in list(running.items()):
                result = _receive(reader)
                if result is None and r.process.is_alive():
                    if timeout is None or now - r.started < timeout:
                        continue
                    r.process.kill()
                    result = r.job.result(TIMEOUT, seconds=now - r.started,
                                          error=f"{r.job.model}: timed out after {timeout:g} s "
                                                "(--timeout)")
                r.process.join()
                reader.close()
                del running[reader]
                if result is None:
                    why = _death(r.process.exitcode)
                    if r.attempt <= retries:
                        log.info("%s: worker process died (%s); trying again", r.job.model, why)
                        queue.appendleft((r.job, r.attempt + 1))
                        continue
                    tries = f" in each of {r.attempt} attempts" if r.attempt > 1 else ""
                    result = r.job.result(CRASHED, seconds=now - r.started,
                                          error=f"{r.job.model}: the worker process died "
                                                f"({why}){tries}")
                yield result
    finally:
        for r in running.values():
            r.process.kill()
            r.process.join()
