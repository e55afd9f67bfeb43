"""``onnxinit export-weights``."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import click

from ..errors import InvalidOptionError
from ..weights import FORMATS
from ..weights import export_weights as run_export
from ._common import echo, logging_options

log = logging.getLogger("onnxinit")


@click.command("export-weights")
@click.argument("model", type=click.Path(dir_okay=True, path_type=str))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Output file (default: <stem>.safetensors beside MODEL).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="File format (default: from the output's suffix, else safetensors).")
@logging_options
def export_weights(model, output, fmt):
    """Write every float initializer of MODEL to safetensors (or .npz), keyed by name.

    The metadata names the source model and the rescale method, and (for a model written by
    `onnxinit rescale`) the scale each tensor received relative to the source.

    \b
    Examples:
      onnxinit export-weights model.autoinit.onnx        # -> model.autoinit.safetensors
      onnxinit export-weights model.onnx -o weights.npz
    """
    suffix = output.suffix.lower().lstrip(".") if output is not None else ""
    if fmt is not None and suffix in FORMATS and suffix != fmt:
        raise InvalidOptionError(
            f"--format {fmt} but -o {output} names a .{suffix} file; drop --format or give the "
            f"file the .{fmt} suffix")
    start = time.perf_counter()
    out = run_export(model, output, fmt=fmt)
    log.info("exported the float initializers of %s in %.2f s", model,
             time.perf_counter() - start)
    echo(f"wrote {out}")
