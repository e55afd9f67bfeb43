"""``onnxinit check``: the CI gate (exit 0 clean, 1 findings, 2 bad input)."""

from __future__ import annotations

import logging
import sys

import click

from ..batch.paths import find_models
from ..batch.results import Result
from ..batch.work import check_model
from ..check import RULES, explain
from ..check_formats import ModelResult, exit_status, format_github, format_json, format_text
from ..findings.gradient import DEFAULT_MAX_RATIO, DEFAULT_MIN_RATIO
from ..value_range import Range
from ..sarif import format_sarif
from ._common import batch_size_option, echo, error_line, logging_options, stats_option
from ._params import GroupedCommand, Number, threshold_options
from .batch_options import batch_options, run_models
from .specs import specs_per_model

log = logging.getLogger("onnxinit")


def _report(result: Result) -> None:
    """A model's lines on stderr: why it was not checked, or its analysis warnings."""
    if result.payload is None:
        echo(error_line(result.error), err=True)
        return
    for warning in result.payload["warnings"]:
        log.warning("%s: %s", result.model, warning)


@click.command("check", cls=GroupedCommand)
@click.argument("models", nargs=-1, metavar="MODEL...",
                type=click.Path(dir_okay=True, path_type=str))
@threshold_options
@click.option("--max-gradient-ratio", type=Number(float, Range(gt=1)),
              default=DEFAULT_MAX_RATIO, show_default=True,
              help="ONNXINIT005 when the first body layer's predicted update-to-weight ratio "
                   "is this many times the last one's.")
@click.option("--min-gradient-ratio", type=Number(float, Range(gt=0, lt=1)),
              default=DEFAULT_MIN_RATIO, show_default=True,
              help="ONNXINIT006 when the first body layer's predicted update-to-weight ratio "
                   "is below this fraction of the last one's.")
@click.option("--no-gradients", is_flag=True,
              help="Skip the backward analysis (and ONNXINIT005/006).")
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
@click.option("--explain", "explain_rule", type=click.Choice(list(RULES), case_sensitive=False),
              help="Print the long description of a rule (e.g. ONNXINIT002) and exit.")
@batch_options
@logging_options
def check(models, max_growth, min_var, max_gradient_ratio, min_gradient_ratio, no_gradients,
          strict, fmt, batch_size, input_shapes, stats,
          explain_rule, batch):
    """Fail when the predicted variance of MODEL explodes or vanishes at initialization.

    Findings are judged on the main signal path from the inputs to the outputs: a tensor whose
    variance exceeds --max-growth or whose signal variance falls below --min-var times the
    input variance (one per connected chain of such tensors, at its first tensor), an
    exponential trend of variance with depth, and gradients that vanish or explode from the
    last layer to the first (predicted update-to-weight ratios; --no-gradients skips them). The same off the main path (residual branches,
    gates, attention weights, normalization statistics, a small output head) are notes, as are
    ops no rule covers (findings with --strict). --explain RULE describes a rule. Several
    models may be given (as pre-commit does), and folders (every *.onnx under them) or
    patterns; results go to stdout in the order given, logs to stderr. Exit
    status: 0 clean, 1 findings in any model, 2 a model could not be checked (unreadable,
    timed out, crashed) or an option is bad.

    \b
    Examples:
      onnxinit check model.onnx
      onnxinit check model.onnx --max-growth 10 --strict
      onnxinit check models/*.onnx --format sarif > onnxinit.sarif
      onnxinit check model.onnx --format github      # annotations in a GitHub workflow
      onnxinit check bert.onnx --input-shape input_ids:8x128 --format json
      onnxinit check models/ --jobs 2 --timeout 300 --jsonl results.jsonl
      onnxinit check --explain ONNXINIT007
    """
    if explain_rule is not None:
        click.echo(explain(explain_rule))
        return
    if not models:
        raise click.UsageError("missing argument MODEL...")
    paths = find_models(models)
    shapes_for, stats_for = specs_per_model(paths, input_shapes, stats)

    def options_for(model: str) -> dict:
        return {"max_growth": max_growth, "min_var": min_var, "strict": strict,
                "gradients": not no_gradients, "max_gradient_ratio": max_gradient_ratio,
                "min_gradient_ratio": min_gradient_ratio,
                "batch_size": batch_size, "input_shapes": shapes_for(model),
                "stats": stats_for(model)}

    results = [ModelResult(r.model, error=r.error) if r.payload is None
               else ModelResult.from_json(r.payload)
               for r in run_models(paths, check_model, options_for, "check", batch, _report)]
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
