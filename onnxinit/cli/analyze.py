"""``onnxinit analyze``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from .. import __version__, escape
from ..batch.paths import find_models, one_file
from ..batch.results import Result, counts, exit_status
from ..batch.work import analyze_model
from ..errors import InvalidOptionError, OnnxInitError
from ..lazy import lazy_module
from ._common import (
    echo,
    error_line,
    logging_options,
    measure_options,
    model_options,
    seed_option,
    stats_option,
    writable_target,
)
from ._params import GroupedCommand
from .batch_options import batch_options, run_models
from .specs import specs_per_model

log = logging.getLogger("onnxinit")

_plot = lazy_module("onnxinit.reporting.plot")  # only for --plot


def _warn(result: Result) -> None:
    for warning in result.payload["analysis"]["warnings"]:
        log.warning("%s: %s", result.model, warning)


def _document(results: list[Result]) -> dict:
    """``--json`` for several models: one entry per model, in the order given."""
    models = [{"model": r.model, "status": r.status,
               **({"analysis": r.payload["analysis"]} if r.payload else {"error": r.error})}
              for r in results]
    return {"tool": "onnxinit", "version": __version__,
            "summary": {"models": len(results), **counts(results)}, "models": models}


@click.command("analyze", cls=GroupedCommand)
@model_options("Batch size for symbolic batch dimensions (the batch --measure runs).",
               many=True)
@stats_option
@measure_options
@click.option("--backward", is_flag=True,
              help="Also predict the gradient of every tensor and parameter at initialization "
                   "(with --measure: measured with onnxinit's autodiff too).")
@click.option("--loss", type=click.Choice(["cross_entropy", "mse", "unit"]), default=None,
              help="The loss --backward puts on the first output (default: cross_entropy with "
                   "uniformly drawn labels).")
@click.option("--loss-output", metavar="TENSOR", default=None,
              help="The tensor --backward puts its loss on (default: the first float output).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="FILE.png|svg",
              help="Also write the plot of variance by depth to FILE (.png or .svg; one model; "
                   "needs matplotlib: onnxinit[report]).")
@seed_option
@batch_options
@logging_options
def analyze(models, input_shapes, batch_size, stats, measure, device, backward, loss,
            loss_output, as_json, plot, seed, batch):
    """Predict the mean and variance of every float tensor of MODEL at initialization.

    Several models, folders (every *.onnx under them) and patterns are analysed in the order
    given: each table after a '==> MODEL <==' line, or with --json one document with an entry
    per model.

    \b
    Examples:
      onnxinit analyze model.onnx
      onnxinit analyze model.onnx --measure --batch-size 64
      onnxinit analyze model.onnx --backward --measure --batch-size 16
      onnxinit analyze model.onnx --backward --loss-output logits
      onnxinit analyze bert.onnx --input-shape input_ids:8x128 --json > moments.json
      onnxinit analyze model.onnx --stats x:0.5,0.25
      onnxinit analyze model.onnx --measure --plot variance.png
      onnxinit analyze models/ --jobs 2 --json > all.json
    """
    if loss is not None and not backward:
        raise InvalidOptionError("--loss is the loss of --backward; add --backward or drop it")
    if loss_output is not None and not backward:
        raise InvalidOptionError("--loss-output is where --backward puts its loss; add --backward "
                                 "or drop it")
    paths = find_models(models)
    if plot is not None:
        if len(paths) != 1:
            raise InvalidOptionError(f"--plot draws one model; {len(paths)} models were given")
        _plot.plot_format(plot)
        _plot.require_matplotlib()
        writable_target(plot, "--plot")
    shapes_for, stats_for = specs_per_model(paths, input_shapes, stats)

    def options_for(model: str) -> dict:
        return {"batch_size": batch_size, "input_shapes": shapes_for(model),
                "stats": stats_for(model), "measure": measure, "seed": seed, "device": device,
                "backward": backward, "loss": loss, "loss_output": loss_output,
                **({"plot": str(plot)} if plot is not None else {})}

    if one_file(list(models)):
        result = run_models(paths, analyze_model, options_for, "analyze", batch)[0]
        if result.payload is None:
            raise OnnxInitError(result.error)
        if as_json:
            click.echo(escape.dumps(result.payload["analysis"], indent=2))
        else:
            echo(result.payload["text"])
        _warn(result)
        return

    def report(result: Result) -> None:
        if result.payload is None:
            echo(error_line(result.error), err=True)
            return
        if not as_json:
            echo(f"==> {result.model} <==\n{result.payload['text']}\n")
        _warn(result)

    results = run_models(paths, analyze_model, options_for, "analyze", batch, report)
    if as_json:
        click.echo(escape.dumps(_document(results), indent=2))
    sys.exit(exit_status(results))
