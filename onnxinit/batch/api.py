"""``check_many``, ``analyze_many`` and ``rescale_many``: the commands over many models from
Python (a model zoo's CI, a neural-architecture-search loop), results as they complete.

Each takes the command's own options by keyword and the batch options of :func:`run_many`
(``jobs``, ``timeout``, ``ray``, ``jsonl``, ``resume``, ``retries``), and returns an iterator
of :class:`~onnxinit.batch.results.Result`: ``index`` and ``model`` say which input it is,
``status`` how it went, ``payload`` what the work returned (see :mod:`onnxinit.batch.work`),
``error`` why not, ``seconds`` how long it took.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from ..analysis import DEFAULT_MAX_GROWTH, DEFAULT_MIN_VAR
from ..errors import InvalidOptionError
from ..methods import make_options, parse_methods, refuse_unread
from ..output_paths import default_output
from .engine import run_many
from .results import Result
from ..findings.gradient import DEFAULT_MAX_RATIO, DEFAULT_MIN_RATIO
from .work import analyze_model, check_model, rescale_model

log = logging.getLogger("onnxinit")


def _plain(mapping: Mapping | None) -> dict:
    """Shapes and stats as JSON lists (the resume key hashes them)."""
    return {name: list(value) for name, value in (mapping or {}).items()}


def check_many(models: Iterable[str], *, max_growth: float = DEFAULT_MAX_GROWTH,
               min_var: float = DEFAULT_MIN_VAR, strict: bool = False, batch_size: int = 32,
               input_shapes: Mapping | None = None, stats: Mapping | None = None,
               gradients: bool = True, max_gradient_ratio: float = DEFAULT_MAX_RATIO,
               min_gradient_ratio: float = DEFAULT_MIN_RATIO, **batch) -> Iterator[Result]:
    """``onnxinit check`` of every model; status passed, failed or unreadable (or timeout,
    crashed, error); the payload is the model's entry of ``check --format json``."""
    options = {"max_growth": max_growth, "min_var": min_var, "strict": strict,
               "batch_size": batch_size, "input_shapes": _plain(input_shapes),
               "stats": _plain(stats), "gradients": gradients,
               "max_gradient_ratio": max_gradient_ratio, "min_gradient_ratio": min_gradient_ratio}
    return run_many(models, check_model, options, command="check", **batch)


def analyze_many(models: Iterable[str], *, batch_size: int = 32,
                 input_shapes: Mapping | None = None, stats: Mapping | None = None,
                 measure: bool = False, seed: int = 0, device: str = "auto",
                 **batch) -> Iterator[Result]:
    """``onnxinit analyze`` of every model; the payload holds ``analysis`` (as ``--json``)
    and ``text`` (the table and summary)."""
    options = {"batch_size": batch_size, "input_shapes": _plain(input_shapes),
               "stats": _plain(stats), "measure": measure, "seed": seed, "device": device}
    return run_many(models, analyze_model, options, command="analyze", **batch)


def without_outputs(models: list[str], method: str) -> list[str]:
    """``models`` less the files that are another model's default output for ``method``
    (``a.autoinit.onnx`` beside ``a.onnx``: a folder rescaled before holds them)."""
    outputs = {default_output(m, method).resolve() for m in models}
    kept = [m for m in models if Path(m).resolve() not in outputs]
    if len(kept) < len(models):
        log.info("skipped %d earlier outputs of rescale --method %s", len(models) - len(kept),
                 method)
    return kept


_BATCH = ("jobs", "timeout", "ray", "jsonl", "resume", "retries", "replay_logs")


def rescale_many(models: Iterable[str], method: str = "autoinit", *,
                 output_dir: str | Path | None = None, in_place: bool = False,
                 write: bool = True, input_shapes: Mapping | None = None, batch_size: int = 32,
                 seed: int = 0, **options) -> Iterator[Result]:
    """``onnxinit rescale`` of every model with ``method`` (earlier outputs among them left out,
    see :func:`without_outputs`); each is written to ``<stem>.<method>.onnx`` beside it, or in ``output_dir``, or over itself (``in_place``), or
    not at all (``write=False``). Method options (``target_var=0.5``...) and batch options
    pass by keyword. The payload holds ``report`` (as ``--report``), ``text`` and ``output``."""
    models = without_outputs(list(models), method)
    batch = {k: options.pop(k) for k in _BATCH if k in options}
    names = parse_methods(method)
    refuse_unread(names, options)
    for name in names:
        make_options(name, options)  # a bad value fails once, here, not once per model
    outputs = {}
    if output_dir is not None and write and not in_place:
        folder = Path(output_dir)
        outputs = {m: str(folder / default_output(m, method).name) for m in models}
        clash = len(set(outputs.values())) < len(outputs)
        if clash:
            raise InvalidOptionError(f"{output_dir}: two models would be written to the same "
                                     "file there (same file name); rescale them separately")

    def options_for(model: str) -> dict:
        return {"method": method, "output": outputs.get(model), "in_place": in_place,
                "write": write, "input_shapes": _plain(input_shapes), "batch_size": batch_size,
                "seed": seed, "method_options": options}

    return run_many(models, rescale_model, options_for, command="rescale", **batch)

