"""``onnxinit report``."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from ..analysis import analyze
from ..reporting.plot import require_matplotlib
from ..reporting.write import write_report
from ._common import (
    echo,
    logging_options,
    measure_options,
    model_options,
    seed_option,
    stats_option,
    writable_target,
)
from ._params import GroupedCommand, threshold_options
from .specs import parse_input_shapes, parse_stats

log = logging.getLogger("onnxinit")


def default_output(model: str) -> Path:
    """``<stem>.report.html`` beside MODEL."""
    path = Path(model)
    return path.with_name(f"{path.stem}.report.html")


@click.command("report", cls=GroupedCommand)
@model_options("Batch size for symbolic batch dimensions (the batch --measure runs).")
@click.argument("rescaled", required=False, type=click.Path(dir_okay=False, path_type=str))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The HTML file to write (default: MODEL's name with .report.html, beside "
                   "it).")
@stats_option
@measure_options
@threshold_options
@seed_option
@logging_options
def report(model, input_shapes, batch_size, rescaled, output, stats, measure, device,
           max_growth, min_var, seed):
    """Write an HTML report on MODEL at initialization (and on RESCALED, its rescaled copy).

    One self-contained page (no network; the plot embedded): the predicted variance of every
    tensor by depth on a log scale, measured next to it with --measure, the tensors check flags
    highlighted and its findings in a table, residual blocks marked; with RESCALED, both models
    on the same axes with the per-layer weight scales. Needs matplotlib (onnxinit[report]).

    \b
    Examples:
      onnxinit report model.onnx -o report.html
      onnxinit report model.onnx model.autoinit.onnx --measure -o report.html
    """
    target = output if output is not None else default_output(model)
    require_matplotlib()
    writable_target(target, "the report")
    options = {"input_shapes": parse_input_shapes(input_shapes), "batch_size": batch_size,
               "stats": parse_stats(stats), "measure": measure, "seed": seed,
               "device": device or "auto", "max_growth": max_growth, "min_var": min_var,
               "backward": True}  # as check: its findings 005/006 and the gradient curve
    analyses = [analyze(path, **options) for path in (model, rescaled) if path is not None]
    for analysis in analyses:
        for warning in analysis.warnings:
            log.warning("%s: %s", analysis.model, warning)
    write_report(analyses[0], target, analyses[1] if len(analyses) > 1 else None)
    echo(f"wrote {target}")
