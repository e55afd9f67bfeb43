"""Method hyperparameters that are also command-line options.

A field declared with :func:`option` carries its help text, its choices, and the range of values
it accepts (``gt``/``ge``/``lt``/``le``); the command line builds ``--field-name`` from it, checks
the value in the user's terms before anything runs, and :func:`check_values` applies the same
range to options built in Python.
"""

from __future__ import annotations

import dataclasses

from ..errors import InvalidOptionError
from ..value_range import Range


def option(default, help: str, *, choices: tuple[str, ...] | None = None, flag: bool = False,
           metavar: str | None = None, gt: float | None = None, ge: float | None = None,
           lt: float | None = None, le: float | None = None):
    """A method hyperparameter (a dataclass field) that is also a ``rescale`` command-line option
    ``--field-name``; ``help`` states its meaning, so each method documents its own
    hyperparameters in one place. A numeric option accepts finite values in the range
    ``gt``/``ge``/``lt``/``le``; ``metavar`` names a string option's value in ``--help``."""
    numeric = not flag and not choices and isinstance(default, (int, float))
    return dataclasses.field(
        default=default,
        metadata={"help": help, "choices": choices, "flag": flag, "metavar": metavar,
                  "range": Range(gt, ge, lt, le) if numeric else None},
    )


def option_name(field_name: str) -> str:
    """``target_var`` -> ``--target-var``."""
    return "--" + field_name.replace("_", "-")


def check_values(options) -> None:
    """Refuse a value outside its option's range or choices (InvalidOptionError naming the
    option): what the command line checks, for options built in Python."""
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if value is None or "help" not in f.metadata:
            continue
        choices, limits = f.metadata["choices"], f.metadata["range"]
        if choices and value not in choices:
            raise InvalidOptionError(
                f"{option_name(f.name)} must be one of {', '.join(choices)}, not {value!r}")
        if limits is not None and (why := limits.problem(float(value))) is not None:
            raise InvalidOptionError(f"{option_name(f.name)} {why}, not {value}")
