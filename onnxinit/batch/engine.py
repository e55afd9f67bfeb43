"""Running one work function over many models: resume, the backend, JSON Lines, logs.

Backends, by the arguments:

- ``jobs=1`` and no ``timeout`` (the one-model command line): in this process, one model after
  the other, with nothing imported for parallelism;
- ``jobs=N`` or a ``timeout``: a process per model, at most N at once
  (:mod:`onnxinit.batch.local`);
- ``ray``: Ray tasks (:mod:`onnxinit.batch.ray_backend`).

Every backend yields :class:`~onnxinit.batch.results.Result` objects as models finish; models
skipped by ``resume`` come first. :func:`in_order` turns that stream into input order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace

from ..errors import InvalidOptionError
from .fingerprint import file_sha256, options_key
from .jobs import Job, Work, run
from .jsonl import JsonlWriter, read_done, resume_key
from .local import cpu_count, run_local
from .ray_backend import import_ray, run_ray
from .results import Result

log = logging.getLogger("onnxinit")

Options = dict | Callable[[str], dict] | None


def workers(jobs: int | str) -> int:
    """``jobs`` as a number of processes (``"auto"``: the cores this process may use)."""
    if jobs == "auto":
        return cpu_count()
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise InvalidOptionError(f"jobs must be a whole number >= 1 or 'auto', not {jobs!r}")
    return jobs


def describe(jobs: int | str, ray: bool | str) -> str:
    """How a batch runs, for the summary line."""
    if ray:
        return "Ray" if ray is True else f"Ray at {ray}"
    n = workers(jobs)
    return f"{n} worker process{'es' if n > 1 else ''}" if n > 1 else "1 process"


def replay(result: Result) -> None:
    """Log the records a worker collected while running the result's model."""
    for level, message in result.log:
        log.log(level, "%s", message)


def run_many(models: Iterable[str], work: Work, options: Options = None, *,
             command: str | None = None, jobs: int | str = 1, timeout: float | None = None,
             ray: bool | str = False, jsonl: str | None = None, resume: bool = False,
             retries: int = 2, replay_logs: bool = True,
             reraise: bool = False) -> Iterator[Result]:
    """Apply ``work(path, options)`` to every model; yield a :class:`Result` per model as it
    finishes (``result.index`` is its position in ``models``).

    ``options``: one dict for every model, or a function of the path giving each model's.
    ``command`` names the work in records and in the resume key (default: the function's
    dotted name). ``jobs``, ``timeout`` (seconds per model), ``ray`` (True, or an address) and
    ``retries`` (a worker that died) choose how to run; ``jsonl`` writes each result to that
    file as it finishes, ``resume`` skips the models whose final result for the same file and
    options is in it. ``replay_logs`` logs the records collected in workers as each result
    arrives; ``reraise`` lets exceptions of in-process work through (``--debug``)."""
    models = list(models)
    n_workers = workers(jobs)
    if timeout is not None and not timeout > 0:
        raise InvalidOptionError(f"timeout must be a number of seconds > 0, not {timeout!r}")
    if resume and jsonl is None:
        raise InvalidOptionError("--resume reuses the results in the --jsonl file; give "
                                 "--jsonl FILE")
    if ray:
        import_ray()
    command = command or f"{work.__module__}.{work.__qualname__}"
    options_for = options if callable(options) else (lambda _model: dict(options or {}))
    in_process = not ray and n_workers == 1 and timeout is None
    level = None if in_process else log.getEffectiveLevel()
    done = read_done(jsonl) if resume else {}
    todo, resumed = [], []
    for index, model in enumerate(models):
        model_options = options_for(model)
        key = options_key(command, model_options)
        sha256 = file_sha256(model) if resume else None
        previous = done.get(resume_key(model, key, sha256)) if sha256 else None
        if previous is not None:
            resumed.append(replace(previous, index=index, resumed=True))
        else:
            todo.append(Job(index, model, work, model_options, command, key, sha256,
                            hash_file=jsonl is not None, log_level=level))
    return _stream(todo, resumed, JsonlWriter(jsonl, append=resume) if jsonl else None,
                   _backend(todo, n_workers, timeout, ray, retries, reraise), replay_logs)


def _backend(todo: list[Job], n_workers: int, timeout: float | None, ray: bool | str,
             retries: int, reraise: bool) -> Iterator[Result]:
    if ray:
        return run_ray(todo, None if ray is True else ray, timeout, retries)
    if n_workers == 1 and timeout is None:
        return (run(job, reraise=reraise) for job in todo)
    return run_local(todo, n_workers, timeout, retries)


def _stream(todo, resumed, writer, results, replay_logs) -> Iterator[Result]:
    try:
        yield from resumed
        for result in results:
            if writer is not None:
                writer.write(result)
            if replay_logs:
                replay(result)
            yield result
    finally:
        if writer is not None:
            writer.close()
        results.close()


def in_order(results: Iterable[Result], on_result: Callable[[Result], None] | None = None
             ) -> list[Result]:
    """Every result, sorted by input index; ``on_result`` is called for each in input order as
    soon as all models before it have finished (so per-model output streams in order)."""
    held: dict[int, Result] = {}
    ordered: list[Result] = []
    for result in results:
        held[result.index] = result
        while len(ordered) in held:
            ordered.append(held.pop(len(ordered)))
            if on_result is not None:
                on_result(ordered[-1])
    return ordered + [held[i] for i in sorted(held)]
