"""``--jsonl FILE`` (one JSON object per model, written and flushed as each finishes) and
``--resume`` (the results already in FILE are reused instead of run again).

A record is :meth:`Result.to_json`: ``index``, ``model``, ``status``, ``payload``, ``error``,
``seconds``, ``command``, ``key`` (the command and its options), ``sha256`` (the model's
bytes). With ``--resume`` a model is skipped when FILE has a record with the same ``model``
path, ``key`` and ``sha256`` whose status is final (passed, failed, ok or unreadable); models
that timed out, crashed or hit an error run again. Without ``--resume`` FILE is truncated.
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import escape
from ..errors import WriteError
from .results import FINAL, Result


def resume_key(model: str, key: str, sha256: str | None) -> tuple[str, str, str | None]:
    return model, key, sha256


def read_done(path: str | Path) -> dict[tuple, Result]:
    """The final results recorded in ``path`` by :func:`resume_key` (the last one wins); a line
    that is not a record (cut short when a run was killed) is ignored. No file: nothing done."""
    done = {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return done
    except OSError as exc:
        raise WriteError(f"{path}: cannot read the --jsonl file to resume: {exc.strerror}") from None
    for line in text.splitlines():
        try:
            result = Result.from_json(json.loads(line))
        except (ValueError, TypeError, KeyError):
            continue
        if result.status in FINAL and result.sha256:
            done[resume_key(result.model, result.key, result.sha256)] = result
    return done


def _cut_short(path: Path) -> bool:
    """True when ``path`` exists and its last line has no line break (a killed run)."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with open(path, "rb") as f:
        f.seek(-1, 2)
        return f.read(1) != b"\n"


class JsonlWriter:
    """Appends (``append``) or writes ``path`` anew; each record is flushed when written, so a
    reader (``tail -f``) or a later ``--resume`` sees every finished model."""

    def __init__(self, path: str | Path, append: bool):
        self.path = Path(path)
        try:
            needs_newline = append and _cut_short(self.path)
            self.file = open(self.path, "a" if append else "w", encoding="utf-8")
        except OSError as exc:
            raise WriteError(f"{path}: cannot write the --jsonl file: {exc.strerror}") from None
        if needs_newline:  # the last record of a killed run was cut short
            self.file.write("\n")

    def write(self, result: Result) -> None:
        self.file.write(escape.dumps(result.to_json()) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()
