"""The models that MODEL arguments name: files, folders and glob patterns.

- a folder: every file under it (recursively) whose name ends in ``.onnx`` in any case
  (``.ONNX``, ``.Onnx``), in sorted path order;
- a pattern with ``*``, ``?`` or ``[`` that is not itself an existing file: the files it matches
  (``**`` crosses folders), sorted; folders it matches are searched as above;
- anything else: that path as given (a missing file is reported by the command, like any
  unreadable model).

Arguments keep their order; a model named twice is processed once, at its first place. A
folder without ONNX files and a pattern that matches nothing are errors: a CI job that checks
"every model" must not pass on none.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable

from ..errors import InvalidOptionError

_GLOB_CHARS = set("*?[")


def is_pattern(argument: str) -> bool:
    return bool(_GLOB_CHARS & set(argument)) and not os.path.exists(argument)


def _onnx_files(folder: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found += [os.path.join(root, f) for f in files if f.lower().endswith(".onnx")]
    return sorted(found)


def find_models(arguments: Iterable[str]) -> list[str]:
    """The model paths named by ``arguments`` (see the module docstring)."""
    models: dict[str, None] = {}
    for argument in map(str, arguments):
        if os.path.isdir(argument):
            found = _onnx_files(argument)
            if not found:
                raise InvalidOptionError(f"{argument}: no .onnx file in this folder")
        elif is_pattern(argument):
            found = []
            for match in sorted(glob.glob(argument, recursive=True)):
                found += _onnx_files(match) if os.path.isdir(match) else [match]
            if not found:
                raise InvalidOptionError(f"{argument}: no file matches this pattern")
        else:
            found = [argument]
        models.update(dict.fromkeys(found))
    return list(models)


def one_file(arguments: list[str]) -> bool:
    """True when the arguments name one model file directly (not a folder or a pattern): the
    commands then print that model's output as they always have."""
    return len(arguments) == 1 and not os.path.isdir(arguments[0]) \
        and not is_pattern(arguments[0])

