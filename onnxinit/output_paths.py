"""Where a written model's files go: the default output name, and the names of the external
data files beside it (derived from the output's name, so the input's files are never
overwritten).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from .errors import InvalidOptionError, WriteError


def default_output(input_path: str | os.PathLike, method: str) -> Path:
    """``dir/model.onnx`` + ``autoinit`` -> ``dir/model.autoinit.onnx``.

    A comma list of methods is joined with ``-`` (``idinit,autoinit`` ->
    ``model.idinit-autoinit.onnx``); characters other than letters, digits, ``_`` and ``-``
    become ``_``. The output always ends in ``.onnx`` whatever the input's suffix."""
    path = Path(input_path)
    tag = "-".join(p.strip() for p in method.split(",") if p.strip())
    tag = re.sub(r"[^A-Za-z0-9_-]", "_", tag) or "rescaled"
    stem = path.stem if path.suffix else path.name
    return path.with_name(f"{stem}.{tag}.onnx")


def external_location(location: str, source_name: str | None, out_name: str,
                      in_place: bool) -> str:
    """Where a tensor stored at ``location`` (relative to the source model) goes beside the
    output: the same folder part, and a file name derived from the output's name.

    - in place: unchanged;
    - a file named after the source model file (``m.onnx.data`` for ``m.onnx``) is renamed after
      the output file (``m.autoinit.onnx.data``); one named after its stem (``m.weights``) after
      the output's stem (``m.autoinit.weights``);
    - any other name is prefixed with the output's stem (``weights.bin`` ->
      ``m.autoinit.weights.bin``).

    Tensors sharing a file in the source share one in the output, so the grouping (and the
    folder layout) is kept while the input's data files are never overwritten.
    """
    if in_place:
        return location
    folder, _, name = location.replace("\\", "/").rpartition("/")
    out_stem = Path(out_name).stem
    src_stem = Path(source_name).stem if source_name else None
    if source_name and name.startswith(source_name):
        new = out_name + name[len(source_name):]
    elif src_stem and name.startswith(src_stem + "."):
        new = out_stem + name[len(src_stem):]
    else:
        new = f"{out_stem}.{name}"
    return f"{folder}/{new}" if folder else new


def external_layout(out: Path, source_path: Path | None, external: Mapping[str, str] | None,
                    in_place: bool) -> dict[str, str]:
    """{tensor name: new location} for the tensors stored externally in the source."""
    if not external:
        return {}
    source_name = source_path.name if source_path is not None else None
    layout = {n: external_location(loc, source_name, out.name, in_place)
              for n, loc in external.items()}
    if source_path is not None and not in_place:
        src_files = {(source_path.parent / loc).resolve() for loc in external.values()}
        for loc in set(layout.values()):
            if (out.parent / loc).resolve() in src_files:
                raise InvalidOptionError(
                    f"{out}: writing external data to {loc!r} would overwrite the input's data "
                    "file; choose another output name"
                )
        if out.resolve() in src_files:
            raise InvalidOptionError(f"{out}: the output is one of the input's data files")
    for loc in set(layout.values()):
        if os.path.isabs(loc) or ".." in Path(loc).parts:
            raise WriteError(f"{out}: external data location {loc!r} escapes the output folder")
    return layout
