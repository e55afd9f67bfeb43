"""The options of ``check``, ``analyze`` and ``rescale`` for many models (``--jobs``,
``--timeout``, ``--jsonl``, ``--resume``, ``--ray``), defined once, and the loop that runs a
command's work over the models named: progress bar, per-model lines in input order, summary."""

from __future__ import annotations

import functools
import os
import re
import time
from contextlib import closing, nullcontext
from dataclasses import dataclass
from pathlib import Path

import click

from .. import progress
from ..batch.engine import describe, in_order, replay, run_many
from ..batch.jobs import Work
from ..batch.results import Result, summary_lines
from ..errors import InvalidOptionError, WriteError
from ..value_range import Range
from ._common import echo
from ._params import GroupedOption, Number

GROUP = "Many models"
_LOCAL = "(local)"  # --ray given without an address
_ADDRESS = re.compile(r"^(auto|ray://\S+|[A-Za-z0-9_.-]+:\d+|\[[0-9A-Fa-f:.]+\]:\d+)$")


class Jobs(Number):
    """``--jobs``: a whole number >= 1, or ``auto`` (one process per core)."""

    def __init__(self):
        super().__init__(int, Range(ge=1))

    def get_metavar(self, param, ctx=None) -> str:
        return "N|auto"

    def convert(self, value, param, ctx):
        if str(value).strip().lower() == "auto":
            return "auto"
        return super().convert(value, param, ctx)


class RayAddress(click.ParamType):
    """``--ray``'s optional ADDRESS: ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``."""

    name = "address"

    def convert(self, value, param, ctx):
        if value == _LOCAL or _ADDRESS.match(str(value)):
            return value
        self.fail(f"{value!r} is not a Ray address (auto, HOST:PORT or ray://HOST:PORT); "
                  "write --ray=ADDRESS, or put --ray after the models", param, ctx)


@dataclass(frozen=True)
class BatchSettings:
    jobs: int | str
    timeout: float | None
    jsonl: Path | None
    resume: bool
    ray: str | None

    @property
    def engine(self) -> dict:
        """The keyword arguments of :func:`onnxinit.batch.engine.run_many`."""
        ray = False if self.ray is None else (True if self.ray == _LOCAL else self.ray)
        return {"jobs": self.jobs, "timeout": self.timeout, "ray": ray,
                "jsonl": None if self.jsonl is None else str(self.jsonl),
                "resume": self.resume}

    def check(self) -> None:
        """Refuse what cannot work before anything runs or is written."""
        if self.resume and self.jsonl is None:
            raise InvalidOptionError("--resume reuses the results in the --jsonl file; give "
                                     "--jsonl FILE")
        if self.jsonl is not None:
            folder = self.jsonl.resolve().parent
            if not (folder.is_dir() and os.access(folder, os.W_OK)):
                raise WriteError(f"{self.jsonl}: --jsonl cannot be written: no writable "
                                 f"folder {folder}")


def batch_options(fn):
    """The many-models options, handed to the command as one ``batch`` argument."""

    @click.option("--jobs", "-j", type=Jobs(), default=1, show_default=True, cls=GroupedOption,
                  group=GROUP, help="Models processed at once, each in a worker process of its "
                                    "own ('auto': one per core). 1 runs them in this process.")
    @click.option("--timeout", type=Number(float, Range(gt=0)), default=None, cls=GroupedOption,
                  group=GROUP, metavar="SECONDS",
                  help="Stop a model after this many seconds (its process is killed; status "
                       "timeout, exit 2); the other models go on.")
    @click.option("--jsonl", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  cls=GroupedOption, group=GROUP, metavar="FILE",
                  help="Write one JSON object per model to FILE as each finishes (flushed).")
    @click.option("--resume", is_flag=True, cls=GroupedOption, group=GROUP,
                  help="Skip the models whose result for the same file contents and options is "
                       "already in the --jsonl FILE; append the others.")
    @click.option("--ray", type=RayAddress(), is_flag=False, flag_value=_LOCAL, default=None,
                  cls=GroupedOption, group=GROUP, metavar="[ADDRESS]",
                  help="Run each model as a Ray task: on the cluster at ADDRESS (auto, "
                       "HOST:PORT, ray://HOST:PORT), or a local Ray instance without one. "
                       "Needs onnxinit[ray].")
    @functools.wraps(fn)
    def wrapper(*args, jobs, timeout, jsonl, resume, ray, **kwargs):
        settings = BatchSettings(jobs, timeout, jsonl, resume, ray)
        if ray is not None and jobs != 1:
            raise InvalidOptionError("--jobs runs local worker processes and --ray runs Ray "
                                     "tasks; give one of them")
        settings.check()
        return fn(*args, batch=settings, **kwargs)

    return wrapper


def _quiet() -> bool:
    return bool(click.get_current_context().meta.get("onnxinit.quiet"))


def run_models(models: list[str], work: Work, options_for, command: str, batch: BatchSettings,
               on_result=None) -> list[Result]:
    """Run ``work`` over ``models`` as ``batch`` says: a progress bar on a terminal, then
    ``on_result`` and the logs of each model in input order as soon as the models before it are
    done, a summary on stderr for several models; the results in input order."""
    debug = bool(click.get_current_context().meta.get("onnxinit.debug"))
    start = time.perf_counter()
    stream = run_many(models, work, options_for, command=command, replay_logs=False,
                      reraise=debug, **batch.engine)
    # no bar object at all unless it is drawn: tqdm creates a multiprocessing lock
    show = len(models) > 1 and progress.enabled()
    drawn = progress.bar(len(models), command, unit="model") if show else nullcontext()
    with drawn as bar, closing(stream):

        def report(result: Result) -> None:
            with progress.write_around_bars() if show else nullcontext():
                replay(result)
                if on_result is not None:
                    on_result(result)

        def counted():
            for result in stream:
                if bar is not None:
                    bar.update(1)
                yield result

        results = in_order(counted(), report)
    if len(models) > 1 and not _quiet():
        for line in summary_lines(results, time.perf_counter() - start,
                                  describe(batch.jobs, batch.engine["ray"])):
            echo(f"onnxinit: {line}", err=True)
    return results

