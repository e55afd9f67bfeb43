"""``onnxinit rescale``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from ..errors import WriteError
from ..methods import METHODS
from ..rescale import RescaleResult
from ..rescale import rescale as run_rescale
from ..weights import check_target, export_weights
from ._common import logging_options, model_options, seed_option
from .specs import parse_input_shapes


def _summary(result: RescaleResult) -> str:
    scales = {n: c.scale for n, c in result.plan.changes.items() if c.scale is not None}
    replaced = [n for n, c in result.plan.changes.items() if c.scale is None]
    lines = [
        f"wrote {result.output}" if result.output else "dry run: nothing written",
        f"  {len(scales)} tensors rescaled, {len(replaced)} replaced (method {result.plan.method})",
    ]
    if scales:
        largest = max(scales, key=scales.get)
        smallest = min(scales, key=scales.get)
        lines.append(f"  largest scale  {scales[largest]:.4g}  ({largest})")
        lines.append(f"  smallest scale {scales[smallest]:.4g}  ({smallest})")
    for method, report in result.method_reports.items():
        lines += _method_lines(method, report or {})
    for name, before in result.outputs_var_before.items():
        after = result.outputs_var_after.get(name, float("nan"))
        lines.append(f"  predicted output var of {name!r}: {before:.4g} -> {after:.4g}")
    return "\n".join(lines)


def _method_lines(method: str, report: dict) -> list[str]:
    """A data-driven method's objective before -> after and the tensors it moved most."""
    lines = []
    before, after = report.get("before"), report.get("after")
    if isinstance(before, dict) and isinstance(after, dict):
        parts = [f"{k} {before[k]:.4g} -> {after[k]:.4g}" for k in before
                 if k in after and isinstance(before[k], (int, float))]
        if parts:
            lines.append(f"  {method} (held-out batch): {', '.join(parts)}")
    if report.get("stopped"):
        lines.append(f"  {method} stopped early: {report['stopped']}")
    moved = report.get("moved_most") or []
    if moved:
        lines.append(f"  {method} moved most: " + ", ".join(
            f"{m['tensor']} x{m['scale']:.3g}" for m in moved[:3]))
    return lines


def method_options(fn):
    """A click option for every hyperparameter declared with ``methods.option``."""
    seen = set()
    for _, options_class in METHODS.values():
        for f in dataclasses.fields(options_class):
            if "help" not in f.metadata or f.name in seen:
                continue
            seen.add(f.name)
            name = "--" + f.name.replace("_", "-")
            meta = f.metadata
            if meta["flag"]:
                fn = click.option(name, f.name, is_flag=True, default=None, help=meta["help"])(fn)
            else:
                kind = (click.Choice(meta["choices"]) if meta["choices"]
                        else str if f.default is None else type(f.default))
                # default=None tells "not given" apart; the method's default is shown in help
                shown = "" if f.default is None else f"  [default: {f.default}]"
                fn = click.option(name, f.name, type=kind, default=None,
                                  help=meta["help"] + shown)(fn)
    return fn


@click.command("rescale")
@model_options
@click.option("-m", "--method", default="autoinit", show_default=True,
              help=f"Method, or a comma list applied in order (e.g. idinit,autoinit). "
                   f"Known: {', '.join(sorted(METHODS))}.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Output file (default: <stem>.<method>.onnx beside MODEL).")
@click.option("--in-place", is_flag=True, help="Overwrite MODEL (off by default).")
@click.option("--dry-run", is_flag=True, help="Plan and report, write no model.")
@method_options
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a JSON report: per tensor scale or replacement, rule and target, "
                   "per method details, predicted output variance before and after.")
@click.option("--export-weights", "weights_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the rescaled weights (.safetensors or .npz), as export-weights.")
@seed_option
@logging_options
def rescale(model, input_shapes, batch_size, method, output, in_place, dry_run, report_path,
            weights_path, seed, **method_values):
    """Rescale the weights of MODEL and write a new ONNX file.

    \b
    Examples:
      onnxinit rescale model.onnx                       # -> model.autoinit.onnx
      onnxinit rescale model.onnx --method autoinit --target-var 0.5 -o out.onnx
      onnxinit rescale model.onnx --report scales.json --dry-run
    """
    if weights_path is not None:
        check_target(weights_path, None, protect=[model])  # fail before writing anything
    result = run_rescale(
        model,
        method,
        output=output,
        in_place=in_place,
        write=not dry_run,
        input_shapes=parse_input_shapes(input_shapes),
        batch_size=batch_size,
        seed=seed,
        **method_values,
    )
    if report_path is not None:
        try:
            report_path.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        except OSError as exc:
            raise WriteError(f"{report_path}: cannot write the report: {exc.strerror}") from None
    if weights_path is not None:
        written = export_weights(result.model, weights_path, model_path=result.output,
                                 protect=[model])
    click.echo(_summary(result))
    if weights_path is not None:
        click.echo(f"wrote {written}")
