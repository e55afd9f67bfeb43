"""``--ray [ADDRESS]``: each model a Ray task, on an existing cluster or a local instance.

Ray schedules and retries; onnxinit only sizes each task and reads the results:

- requests: one CPU (propagation runs on one thread) and ``memory`` sized from the model's bytes
  (:func:`memory_request`), so Ray places big models where they fit;
- a worker that dies mid-task (killed, out of memory, a segfault) is retried by Ray
  (``max_retries``), then reported ``crashed``;
- ``timeout``: Ray has no per-task time limit, so a task given one runs its model in a process
  of its own on the worker (:func:`onnxinit.batch.local.run_local`) and kills it when the time
  is up; a model whose process died raises :class:`WorkerCrashed`, which Ray retries as well
  (``retry_exceptions``). Without a timeout the model runs in the Ray worker itself.

The connection: a process already connected to Ray (a Ray Tune trainable, a driver that called
``ray.init``) submits to that cluster, and leaves the connection open; otherwise ``ADDRESS``
(``auto``, ``HOST:PORT``, ``ray://HOST:PORT``) is connected to, and without one (and no
``RAY_ADDRESS`` in the environment) a local instance is started with a small object store and no
dashboard, and shut down at the end. The cluster's workers must be able to import onnxinit
(installed there, or shipped with a ``runtime_env``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from .._loading import external_data_files
from ..errors import InvalidOptionError
from .jobs import Job, run
from .local import run_local
from .results import CRASHED, ERROR, Result

log = logging.getLogger("onnxinit")

EXTRA_HINT = "--ray needs Ray: pip install 'onnxinit[ray]'"
LOCAL_OBJECT_STORE = 200 * 1024**2  # results are small JSON; the minimum Ray accepts is ~75 MB
BASE_MEMORY = 256 * 1024**2
MEMORY_PER_BYTE = 4  # model bytes held at once: the proto, arrays, a rescaled copy, a session
SMALL_FILE = 16 * 1024**2  # a model file this small may keep its weights in external files


class WorkerCrashed(RuntimeError):
    """A model's process died on a Ray worker (Ray retries the task)."""


def import_ray():
    """The ``ray`` module, or the one-line error that names the extra to install."""
    try:
        import ray
    except ImportError:
        raise InvalidOptionError(EXTRA_HINT) from None
    return ray


def model_bytes(path: str) -> int:
    """The model file's size plus, for a small file, the external data files it names."""
    try:
        size = os.path.getsize(path)
        if size <= SMALL_FILE:
            proto = onnx.load(path, load_external_data=False)
            folder = Path(path).parent
            size += sum(os.path.getsize(folder / location) for location in
                        set(external_data_files(proto).values())
                        if (folder / location).is_file())
    except (OSError, ValueError, RuntimeError, DecodeError):
        return 0  # unreadable: the task only reports that
    return size


def memory_request(path: str) -> int:
    """Bytes of memory a task asks Ray for: 256 MiB plus 4 times the model's bytes."""
    return BASE_MEMORY + MEMORY_PER_BYTE * model_bytes(path)


def _task(job: Job, timeout: float | None) -> Result:
    """The body of one Ray task."""
    if timeout is None:
        return run(job)
    result = next(run_local([job], workers=1, timeout=timeout, retries=0))
    if result.status == CRASHED:
        raise WorkerCrashed(result.error)
    return result


def connect(ray, address: str | None, local_cpus: int | None = None) -> bool:
    """Connect to Ray unless this process already is; True when this call connected (and so
    should disconnect)."""
    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
    if address is None and not os.environ.get("RAY_ADDRESS"):
        ray.init(num_cpus=local_cpus, object_store_memory=LOCAL_OBJECT_STORE,
                 include_dashboard=False, **quiet)
    else:
        ray.init(address=address, **quiet)
    return True


def _attempts(retries: int) -> str:
    return f" in each of {retries + 1} attempts" if retries else ""


def _collect(ray, ref, job: Job, retries: int) -> Result:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, WorkerCrashed):
            return job.result(CRASHED, error=f"{exc.cause}{_attempts(retries)}")
        return job.result(ERROR, error=f"{job.model}: the Ray task failed: {exc.cause!r}")
    except ray.exceptions.RayError as exc:  # the worker died in every attempt, the node went
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return job.result(CRASHED, error=f"{job.model}: the Ray worker died "
                                         f"({type(exc).__name__}: {reason}){_attempts(retries)}")


def run_ray(jobs: list[Job], address: str | None = None, timeout: float | None = None,
            retries: int = 2, local_cpus: int | None = None) -> Iterator[Result]:
    """Run ``jobs`` as Ray tasks; results as they complete. Stopping the iteration cancels
    the tasks not yet done (and shuts down a local instance this call started)."""
    ray = import_ray()
    started = connect(ray, address, local_cpus)
    task = ray.remote(_task)
    pending: dict = {}
    try:
        for job in jobs:
            ref = task.options(num_cpus=1, memory=memory_request(job.model),
                               max_retries=retries, retry_exceptions=[WorkerCrashed],
                               name=f"onnxinit {job.command} {Path(job.model).name}"
                               ).remote(job, timeout)
            pending[ref] = job
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                yield _collect(ray, ref, pending.pop(ref), retries)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()
