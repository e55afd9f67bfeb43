"""``onnxinit analyze``."""

from __future__ import annotations

import logging

import click

from .. import escape
from ..analysis import analyze as run_analyze
from ..errors import InvalidOptionError
from ..report import analysis_summary, analysis_table
from ._common import echo, logging_options, model_options, seed_option, stats_option
from .specs import of_one_model, parse_input_shapes, parse_stats

log = logging.getLogger("onnxinit")


@click.command("analyze")
@model_options("Batch size for symbolic batch dimensions (the batch --measure runs).")
@stats_option
@click.option("--measure", is_flag=True,
              help="Also run the model in onnxruntime on seeded Gaussian inputs and show the "
                   "measured moments next to the predicted ones.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
              help="Where --measure runs (default: auto, the GPU when onnxruntime-gpu can use "
                   "one).")
@seed_option
@logging_options
def analyze(model, input_shapes, batch_size, stats, measure, as_json, device, seed):
    """Predict the mean and variance of every float tensor of MODEL at initialization.

    \b
    Examples:
      onnxinit analyze model.onnx
      onnxinit analyze model.onnx --measure --batch-size 64
      onnxinit analyze bert.onnx --input-shape input_ids:8x128 --json > moments.json
      onnxinit analyze model.onnx --stats x:0.5,0.25
    """
    if device is not None and not measure:
        raise InvalidOptionError("--device says where --measure runs; add --measure or drop it")
    result = run_analyze(
        model,
        input_shapes=parse_input_shapes(of_one_model(input_shapes, model)),
        batch_size=batch_size,
        stats=parse_stats(of_one_model(stats, model)),
        measure=measure,
        seed=seed,
        device=device or "auto",
    )
    if as_json:
        click.echo(escape.dumps(result.to_dict(), indent=2))
    else:
        echo(analysis_table(result))
        echo()
        echo(analysis_summary(result))
    for warning in result.warnings:
        log.warning("%s: %s", model, warning)
