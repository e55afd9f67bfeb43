"""``onnxinit analyze``."""

from __future__ import annotations

import json

import click

from ..analysis import analyze as run_analyze
from ..report import analysis_summary, analysis_table
from ._common import logging_options, model_options, seed_option, stats_option
from .specs import parse_input_shapes, parse_stats


@click.command("analyze")
@model_options
@stats_option
@click.option("--measure", is_flag=True,
              help="Also run the model in onnxruntime on seeded Gaussian inputs and show the "
                   "measured moments next to the predicted ones.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True, help="Where --measure runs.")
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
    result = run_analyze(
        model,
        input_shapes=parse_input_shapes(input_shapes),
        batch_size=batch_size,
        stats=parse_stats(stats),
        measure=measure,
        seed=seed,
        device=device,
    )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(analysis_table(result))
        click.echo()
        click.echo(analysis_summary(result))
    for warning in result.warnings:
        click.echo(f"onnxinit: warning: {warning}", err=True)
