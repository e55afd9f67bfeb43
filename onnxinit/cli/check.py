"""``onnxinit check``: the CI gate (exit 0 clean, 1 findings, 2 bad input)."""

from __future__ import annotations

import logging
import sys

import click

from ..analysis import DEFAULT_MAX_GROWTH, DEFAULT_MIN_VAR, analyze
from ..check import failed, find, format_github, format_json, format_text
from ..errors import OnnxInitError
from ..sarif import format_sarif
from ._common import EXIT_USAGE, logging_options, stats_option
from .specs import parse_input_shapes, parse_stats

log = logging.getLogger("onnxinit")


@click.command("check")
@click.argument("models", nargs=-1, required=True, metavar="MODEL...",
                type=click.Path(dir_okay=True, path_type=str))
@click.option("--max-growth", type=click.FloatRange(min=1.0), default=DEFAULT_MAX_GROWTH,
              show_default=True, help="Finding when a tensor's predicted variance exceeds this "
                                      "many times the input variance.")
@click.option("--min-var", type=click.FloatRange(min=0.0, max=1.0, min_open=True),
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
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Batch size for symbolic batch dimensions.")
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
    shapes, input_stats = parse_input_shapes(input_shapes), parse_stats(stats)
    results, bad = [], False
    for model in models:
        try:
            analysis = analyze(model, input_shapes=shapes, batch_size=batch_size,
                               stats=input_stats, max_growth=max_growth, min_var=min_var)
        except OnnxInitError as exc:
            if len(models) == 1 or click.get_current_context().meta.get("onnxinit.debug"):
                raise
            click.echo(f"onnxinit: error: {exc}", err=True)
            bad = True
            continue
        for warning in analysis.warnings:
            log.warning("%s: %s", model, warning)
        results.append((model, find(analysis, strict=strict), analysis))
    if fmt == "text":
        for model, findings, _ in results:
            click.echo(format_text(model, findings))
    elif fmt == "json":
        if results:
            click.echo(format_json(results))
    elif fmt == "sarif":
        click.echo(format_sarif([(model, findings) for model, findings, _ in results]))
    else:
        lines = [format_github(model, findings) for model, findings, _ in results]
        if any(lines):
            click.echo("\n".join(line for line in lines if line))
    if bad:
        sys.exit(EXIT_USAGE)
    if any(failed(findings) for _, findings, _ in results):
        sys.exit(1)
