"""Method hyperparameters that are also command-line options."""

from __future__ import annotations

import dataclasses


def option(default, help: str, *, choices: tuple[str, ...] | None = None, flag: bool = False):
    """A method hyperparameter (a dataclass field) that is also a ``rescale`` command-line option
    ``--field-name``; ``help`` states its meaning, so each method documents its own
    hyperparameters in one place."""
    return dataclasses.field(
        default=default, metadata={"help": help, "choices": choices, "flag": flag}
    )
