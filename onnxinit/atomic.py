"""Writing a set of files all or nothing.

Every file is written to a temporary in its target folder (``mkstemp``: a fresh name, mode set
from the umask afterwards), flushed to disk, and the temporaries are moved into place with
``os.replace`` in the order they were opened once everything is written. On any failure the
temporaries, files already moved into place that did not exist before, and folders created for
them are removed. A file that existed and was replaced before the failure stays replaced (only
the last moves can fail there: open the file that makes the set usable, the model, last).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from .errors import WriteError


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class AtomicFiles:
    """Use as a context manager; :meth:`open` each file, write it, then :meth:`commit`. Leaving
    the block without committing (an exception) removes everything written."""

    def __init__(self, error_prefix: str):
        self.error_prefix = error_prefix  # an OSError becomes WriteError("<prefix>: <reason>")
        self._open: list[tuple[BinaryIO, Path, Path]] = []  # (handle, temporary, target)
        self._temps: list[Path] = []
        self._created: list[Path] = []
        self._placed: list[Path] = []
        self._done = False

    def open(self, target: str | os.PathLike) -> BinaryIO:
        """An unbuffered binary file that becomes ``target`` on :meth:`commit`; missing folders
        on the way are created (and removed again on failure)."""
        target = Path(target)
        missing, parent = [], target.parent
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        for folder in reversed(missing):
            folder.mkdir()
            self._created.append(folder)
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        temp = Path(name)
        self._temps.append(temp)
        handle = os.fdopen(fd, "wb", buffering=0)
        self._open.append((handle, temp, target))
        return handle

    def write(self, target: str | os.PathLike, data: bytes) -> None:
        """A whole file at once."""
        self.open(target).write(data)

    def commit(self) -> None:
        """Flush every file to disk, then move each into place (in the order opened)."""
        mode = 0o666 & ~_umask()
        for handle, temp, _ in self._open:
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            os.chmod(temp, mode)  # mkstemp makes 0600; give the usual mode
        for _, temp, target in self._open:
            existed = target.exists()
            os.replace(temp, target)
            self._temps.remove(temp)
            if not existed:
                self._placed.append(target)
        self._done = True

    def abort(self) -> None:
        for handle, _, _ in self._open:
            handle.close()
        for path in self._temps + self._placed:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        for folder in reversed(self._created):
            try:
                folder.rmdir()
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if self._done:
            return False
        self.abort()
        if isinstance(exc, OSError):
            raise WriteError(f"{self.error_prefix}: {exc.strerror or exc}") from None
        return False


def write_atomically(target: str | os.PathLike, data: bytes, error_prefix: str) -> None:
    """One file, all or nothing."""
    with AtomicFiles(error_prefix) as files:
        files.write(target, data)
        files.commit()
