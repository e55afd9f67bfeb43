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
from .options import check_values, option, option_name

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
    """The method's options from a dict holding (at least) its fields, others ignored; a value
    outside its option's range is refused."""
    options_class = METHODS[name][1]
    fields = {f.name for f in dataclasses.fields(options_class)}
    options = options_class(**{k: v for k, v in values.items() if k in fields and v is not None})
    check_values(options)
    return options


def option_fields() -> dict[str, tuple[dataclasses.Field, list[str]]]:
    """Every command-line option of the methods: field name -> (its field, the methods that
    read it, in ``METHODS`` order, which is the order the README documents them in)."""
    out: dict[str, tuple[dataclasses.Field, list[str]]] = {}
    for method, (_, options_class) in METHODS.items():
        for f in dataclasses.fields(options_class):
            if "help" in f.metadata:
                out.setdefault(f.name, (f, []))[1].append(method)
    return out


def refuse_unread(names: list[str], given: dict) -> None:
    """Refuse an option (a field name with a value not None in ``given``) that none of the
    methods ``names`` reads: InvalidOptionError naming it and the methods that take it."""
    readers = {n for name in names for n in (f.name for f in
                                              dataclasses.fields(METHODS[name][1]))}
    takers = option_fields()
    unread = [key for key, value in given.items() if value is not None and key not in readers]
    unknown = [key for key in unread if key not in takers]
    if unknown:
        raise InvalidOptionError(f"unknown method option {unknown[0]!r}")
    if unread:
        which = "; ".join(f"{option_name(key)} is an option of {', '.join(takers[key][1])}"
                          for key in unread)
        raise InvalidOptionError(f"--method {','.join(names)} reads no "
                                 f"{', '.join(map(option_name, unread))}: {which}")


__all__ = ["METHODS", "make_options", "option", "option_fields", "parse_methods",
           "refuse_unread"]
