"""Initialization methods: each turns a ModelGraph (and options) into a Plan.

``METHODS`` maps a ``--method`` name to ``(plan_function, options_class)``; a method module adds
itself here. Options classes are dataclasses whose fields are the method's hyperparameters; a
field declared with :func:`.options.option` becomes a ``rescale`` command-line option
(``--field-name``) with its help text, so each method documents its own hyperparameters in one
place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from ..errors import InvalidOptionError
from . import autoinit, classic, gradinit, idinit, lsuv, metainit, nio
from .options import option

METHODS: dict[str, tuple[Callable, type]] = {
    "autoinit": (autoinit.plan, autoinit.AutoInitOptions),
    "idinit": (idinit.plan, idinit.IDInitOptions),
    "xavier": (classic.planner("xavier"), classic.ClassicOptions),
    "glorot": (classic.planner("xavier"), classic.ClassicOptions),
    "kaiming": (classic.planner("kaiming"), classic.ClassicOptions),
    "he": (classic.planner("kaiming"), classic.ClassicOptions),
    "lecun": (classic.planner("lecun"), classic.ClassicOptions),
    "orthogonal": (classic.planner("orthogonal"), classic.ClassicOptions),
    "lsuv": (lsuv.plan, lsuv.LSUVOptions),
    "gradinit": (gradinit.plan, gradinit.GradInitOptions),
    "metainit": (metainit.plan, metainit.MetaInitOptions),
    "nio": (nio.plan, nio.NIOOptions),
}


def parse_methods(spec: str) -> list[str]:
    """``"idinit,autoinit"`` -> ``["idinit", "autoinit"]``, refusing unknown names."""
    names = [name.strip().lower() for name in spec.split(",") if name.strip()]
    if not names:
        raise InvalidOptionError("--method needs at least one method name")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise InvalidOptionError(
            f"--method: unknown method {', '.join(unknown)} (known: {', '.join(sorted(METHODS))})"
        )
    return names


def make_options(name: str, values: dict):
    """The method's options from a dict holding (at least) its fields; others are ignored."""
    options_class = METHODS[name][1]
    fields = {f.name for f in dataclasses.fields(options_class)}
    return options_class(**{k: v for k, v in values.items() if k in fields and v is not None})


__all__ = ["METHODS", "make_options", "option", "parse_methods"]
