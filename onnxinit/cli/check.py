"""``onnxinit check``: the CI gate (exit 0 clean, 1 findings, 2 bad input)."""

from __future__ import annotations

import logging
import sys
import time

import click

from ..analysis import DEFAULT_MAX_GROWTH, DEFAULT_MIN_VAR, analyze
from ..check import find
from ..check_formats import ModelResult, exit_status, format_github, format_json, format_text
from ..errors import OnnxInitError
from ..methods.options import Range
from ..sarif import format_sarif
from ._common import batch_size_option, echo, error_line, logging_options, stats_option
from ._params import Number
from .specs import specs_per_model

log = logging.getLogger("onnxinit")


@click.command("check")
@click.argument("models", nargs=-1, required=True, metavar="MODEL...",
                type=click.Path(dir_okay=True, path_type=str))
@click.option("--max-growth", type=Number(float, Range(ge=1)), default=DEFAULT_MAX_GROWTH,
              show_default=True, help="Finding when a tensor's predicted variance exceeds this "
                                      "many times the input variance.")
@click.option("--min-var", type=Number(float, Range(gt=0, le=1)),
              default=DEFAULT_MIN_VAR, show_default=True,
              help="Finding when a tensor's predicted variance falls below this many times the "
                   "input variance.")
@click.option("--strict", is_flag=True,
              help="Ops without a rule (empirical fallback or pass-through) are findings, "
                   "not notes.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "sarif", "github"]),
              default="text", show_default=True,
              help="text; json; sarif (SARIF 2.1.0 for code scanning); github (workflow "
                   "annotations).")
@batch_size_option("Batch size for symbolic batch dimensions.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME:DIMS",
              help="Concrete shape of an input, e.g. x:1x3x224x224 (repeatable).")
@stats_option
@logging_options
def check(models, max_growth, min_var, strict, fmt, batch_size, input_shapes, stats):
    """Fail when the predicted variance of MODEL explodes or vanishes at initialization.

    Findings: a tensor whose variance exceeds --max-growth or falls below --min-var times the
    input variance (one per connected chain of such tensors, at its first tensor), and an
    exponential trend of variance with depth. Ops no rule covers are notes (findings with
    --strict). Several models may be given (as pre-commit does); results go to stdout, logs to
    stderr. Exit status: 0 clean, 1 findings in any model, 2 a model could not be read or an
    option is bad.

    \b
    Examples:
      onnxinit check model.onnx
      onnxinit check model.onnx --max-growth 10 --strict
      onnxinit check models/*.onnx --format sarif > onnxinit.sarif
      onnxinit check model.onnx --format github      # annotations in a GitHub workflow
      onnxinit check bert.onnx --input-shape input_ids:8x128 --format json
    """
    shapes_for, stats_for = specs_per_model(models, input_shapes, stats)
    debug = click.get_current_context().meta.get("onnxinit.debug")
    results = []
    for model in models:
        start = time.perf_counter()
        try:
            analysis = analyze(model, input_shapes=shapes_for(model), batch_size=batch_size,
                               stats=stats_for(model), max_growth=max_growth, min_var=min_var)
        except OnnxInitError as exc:
            if debug:
                raise
            echo(error_line(exc), err=True)
            results.append(ModelResult(model, error=str(exc)))
            continue
        for warning in analysis.warnings:
            log.warning("%s: %s", model, warning)
        results.append(ModelResult(model, find(analysis, strict=strict), analysis))
        log.info("checked %s in %.2f s: %s, %d findings", model, time.perf_counter() - start,
                 results[-1].status, len(results[-1].findings))
    if fmt == "text":
        if text := format_text(results):
            click.echo(text)
    elif fmt == "json":
        click.echo(format_json(results))
    elif fmt == "sarif":
        click.echo(format_sarif(results))
    elif text := format_github(results):
        click.echo(text)
    sys.exit(exit_status(results))
