"""What makes two runs of a model "the same" for ``--resume``: the bytes of the files and the
command with its options.

- :func:`file_sha256`: sha256 over the model file's bytes, then, for each external-data file the
  model names (sorted by location), the location and that file's bytes. Editing a weight in an
  external ``.data`` file changes the hash; touching a file (its mtime) does not.
- :func:`options_key`: sha256 of the command name, the onnxinit version and every option that
  the work reads for this model, as canonical JSON. Options of how the batch runs (``--jobs``,
  ``--timeout``, ``--ray``, ``--jsonl``, ``--resume``) and of how results are printed
  (``--format``, ``--json``, ``-v``/``-q``) are not part of it: they do not change a result.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from .._loading import external_data_files
from .._version import __version__

_CHUNK = 1 << 20
# every external-data entry of a tensor has the key "location"; a file without these bytes
# has none, and is not parsed
_MARK = b"location"


def _hash_bytes(digest, path: Path) -> bool:
    """Feed the file to ``digest``; True when the bytes of "location" occur in it."""
    found, tail = False, b""
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            found = found or _MARK in tail + chunk
            tail = chunk[-len(_MARK):]
    return found


def file_sha256(path: str | Path) -> str | None:
    """The content hash of a model and its external data (None when a file cannot be read:
    such a model is never skipped)."""
    path = Path(path)
    digest = hashlib.sha256()
    try:
        locations = set()
        if _hash_bytes(digest, path):
            model = onnx.load(str(path), load_external_data=False)
            locations = set(external_data_files(model).values())
        root = path.parent.resolve()
        for location in sorted(locations):
            if root not in (root / location).resolve().parents:
                return None  # outside the model's folder: the work refuses such a model
            digest.update(b"\0" + location.encode() + b"\0")
            _hash_bytes(digest, path.parent / location)
    except (OSError, ValueError, RuntimeError, DecodeError):
        return None
    return digest.hexdigest()


def options_key(command: str, options: dict) -> str:
    """A short, stable identifier of ``command`` run with ``options`` by this onnxinit."""
    text = json.dumps({"command": command, "version": __version__, "options": options},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
