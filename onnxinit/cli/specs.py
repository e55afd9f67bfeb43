"""Parsing the command line's tensor specs: ``--input-shape NAME:DIMS`` and
``--stats NAME:MEAN,VAR``, each also as ``MODEL:NAME:...`` for one model of several.

A name may itself contain ``:`` (``input:0`` from tf2onnx): the value is what follows the last
``:``, and a leading ``MODEL:`` is recognised only when it is one of the models given on the
command line, exactly as given.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

from .._loading import input_names
from ..errors import InvalidOptionError, OnnxInitError

_SHAPE_SPEC = re.compile(r"^(.+):(\d+(?:[x,]\d+)*)$")
_STATS_SPEC = re.compile(r"^(.+):([^,:]+),([^,:]+)$")


def parse_input_shapes(specs: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """``["x:1x3x224x224", ...]`` -> ``{"x": (1, 3, 224, 224)}``; every dimension >= 1."""
    shapes = {}
    for spec in specs:
        match = _SHAPE_SPEC.match(spec.strip())
        if not match:
            raise InvalidOptionError(
                f"--input-shape {spec!r}: expected NAME:DIMS like x:1x3x224x224"
            )
        dims = tuple(int(d) for d in re.split("[x,]", match.group(2)))
        if min(dims) < 1:
            raise InvalidOptionError(
                f"--input-shape {spec!r}: every dimension must be at least 1")
        shapes[match.group(1)] = dims
    return shapes


def parse_stats(specs: Iterable[str]) -> dict[str, tuple[float, float]]:
    """``["x:0,1"]`` -> ``{"x": (0.0, 1.0)}`` (mean, variance): finite, variance > 0."""
    stats = {}
    for spec in specs:
        match = _STATS_SPEC.match(spec.strip())
        try:
            if not match:
                raise ValueError
            mean, var = float(match.group(2)), float(match.group(3))
            if not math.isfinite(mean) or not math.isfinite(var) or var <= 0:
                raise ValueError
        except ValueError:
            raise InvalidOptionError(
                f"--stats {spec!r}: expected NAME:MEAN,VAR with finite numbers and VAR > 0 "
                "(a constant input carries no signal to analyse), like x:0,1"
            ) from None
        stats[match.group(1)] = (mean, var)
    return stats


def split_by_model(specs: Iterable[str], models: Sequence[str]) -> tuple[list[str],
                                                                          dict[str, list[str]]]:
    """``(specs for every model, {model: specs for that model only})``: a spec that starts with
    ``MODEL:`` for one of ``models`` (the longest that matches) is that model's, the ``MODEL:``
    prefix removed."""
    everywhere, per_model = [], {}
    for spec in specs:
        owner = max((m for m in models if spec.startswith(f"{m}:")), key=len, default=None)
        if owner is None:
            everywhere.append(spec)
        else:
            per_model.setdefault(owner, []).append(spec[len(owner) + 1:])
    return everywhere, per_model


def of_one_model(specs: Iterable[str], model: str) -> list[str]:
    """The specs of a command that takes one MODEL: ``MODEL:NAME:...`` becomes ``NAME:...``."""
    everywhere, per_model = split_by_model(specs, [model])
    return everywhere + per_model.get(model, [])


def for_model(parsed: dict, inputs: Iterable[str]) -> dict:
    """The entries of ``parsed`` (a name-keyed spec dict) for the inputs a model has."""
    names = set(inputs)
    return {name: value for name, value in parsed.items() if name in names}


def specs_per_model(models, input_shapes, stats):
    """``(shapes_for, stats_for)``, functions giving the --input-shape and --stats entries of
    each of several models: a plain ``NAME:...`` applies to every model that has an input NAME
    (refused when no model has it; the models' inputs are read, without their weights' external
    data, only when there are several models and such specs), a ``MODEL:NAME:...`` to that model
    only."""
    shapes_all, shapes_own = split_by_model(input_shapes, models)
    stats_all, stats_own = split_by_model(stats, models)
    shapes, stats_ = parse_input_shapes(shapes_all), parse_stats(stats_all)
    own = {m: (parse_input_shapes(shapes_own.get(m, [])), parse_stats(stats_own.get(m, [])))
           for m in models}
    inputs = {}
    if len(models) > 1 and (shapes or stats_):
        for model in models:
            try:
                inputs[model] = input_names(model)
            except OnnxInitError:
                pass  # reported when the model is checked
        known = set().union(*inputs.values())
        for option, names in (("--input-shape", shapes), ("--stats", stats_)):
            missing = [n for n in names if n not in known]
            if missing and len(inputs) == len(models):
                raise InvalidOptionError(
                    f"{option} {missing[0]}: no model given has an input of that name")

    def pick(everywhere: dict, index: int):
        def for_(model: str) -> dict:
            shared = for_model(everywhere, inputs[model]) if model in inputs else everywhere
            return {**shared, **own[model][index]}
        return for_

    return pick(shapes, 0), pick(stats_, 1)
