"""``onnxinit rescale``."""

from __future__ import annotations

import os
from importlib.util import find_spec
from pathlib import Path

import click

from .. import escape
from ..errors import InvalidOptionError, WriteError
from ..methods import METHODS, option_fields, parse_methods, refuse_unread
from ..methods.options import option_name
from ..rescale import RescaleResult, output_path
from ..rescale import rescale as run_rescale
from ..weights import check_target, export_weights, format_for
from ._common import echo, logging_options, model_options, seed_option
from ._params import GroupedCommand, GroupedOption, Number
from .specs import of_one_model, parse_input_shapes


def _summary(result: RescaleResult) -> str:
    scales = {n: c.scale for n, c in result.plan.changes.items() if c.scale is not None}
    replaced = [n for n, c in result.plan.changes.items() if c.scale is None]
    lines = [
        f"wrote {result.output}" if result.output else "dry run: no model written",
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


def _check_files(model, method, output, in_place, dry_run, report_path, weights_path) -> None:
    """Everything about the files to write is checked before anything is computed or written:
    options that contradict each other, two outputs (or an output and the input) that are one
    file, and a weights format that cannot be written."""
    if in_place and output is not None:
        raise InvalidOptionError("--in-place writes MODEL itself; give --in-place or -o, not both")
    if dry_run:
        given = [name for name, value in (("-o/--output", output), ("--in-place", in_place),
                                          ("--export-weights", weights_path)) if value]
        if given:
            raise InvalidOptionError(f"--dry-run writes no model, so {given[0]} has nothing to "
                                     "do; drop one of them (--report works with --dry-run)")
    targets = {"the input MODEL": Path(model)}
    if not dry_run:
        targets["the output model" if output is None else "-o/--output"] = output_path(
            model, method, output, in_place)
    targets["--report"], targets["--export-weights"] = report_path, weights_path
    seen: dict[Path, str] = {}
    for role, path in targets.items():
        if path is None:
            continue
        folder = path.resolve().parent
        if role != "the input MODEL" and not (folder.is_dir() and os.access(folder, os.W_OK)):
            raise WriteError(f"{path}: {role} cannot be written: no writable folder {folder}")
        key = path.resolve()
        if key in seen and not (in_place and seen[key] == "the input MODEL"):
            raise InvalidOptionError(f"{path}: {role} would be the same file as {seen[key]}; "
                                     "choose another file")
        seen.setdefault(key, role)
    if weights_path is not None:
        if format_for(weights_path, None) == "safetensors" and find_spec("safetensors") is None:
            raise InvalidOptionError(
                f"--export-weights {weights_path}: writing safetensors needs the safetensors "
                "package (pip install safetensors), or give --export-weights a .npz file")
        check_target(weights_path, None,
                     protect=[p for p, role in seen.items() if role != "--export-weights"])


def _method_option(name: str, f, methods: list[str]):
    """The click option of one method field, in the group of the methods that read it."""
    meta = f.metadata
    group = f"Options of {', '.join(methods)}"
    if meta["flag"]:
        return click.option(option_name(name), name, cls=GroupedOption, group=group,
                            is_flag=True, default=None, help=meta["help"])
    if meta["choices"]:
        kind = click.Choice(meta["choices"])
    elif meta.get("range") is not None:
        kind = Number(type(f.default), meta["range"])
    else:
        kind = click.STRING
    # default=None tells "not given" apart (and refuses what no chosen method reads); the
    # method's default is shown in the help
    accepted = meta["range"].describe() if meta.get("range") is not None else ""
    shown = "; ".join(x for x in (f"default: {f.default}" if f.default is not None else "",
                                  accepted) if x)
    shown = f"  [{shown}]" if shown else ""
    return click.option(option_name(name), name, cls=GroupedOption, group=group, type=kind,
                        default=None, metavar=meta.get("metavar"), help=meta["help"] + shown)


def method_options(fn):
    """A click option for every hyperparameter declared with ``methods.options.option``,
    grouped by the methods that read it, in the order the methods are documented."""
    for name, (f, methods) in reversed(option_fields().items()):
        fn = _method_option(name, f, methods)(fn)
    return fn


@click.command("rescale", cls=GroupedCommand)
@model_options("Batch size for symbolic batch dimensions and for the batches of the "
               "data-driven methods (lsuv, gradinit, metainit, nio).")
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
    refuse_unread(parse_methods(method), method_values)
    _check_files(model, method, output, in_place, dry_run, report_path, weights_path)
    result = run_rescale(
        model,
        method,
        output=output,
        in_place=in_place,
        write=not dry_run,
        input_shapes=parse_input_shapes(of_one_model(input_shapes, model)),
        batch_size=batch_size,
        seed=seed,
        **method_values,
    )
    if report_path is not None:
        try:
            report_path.write_text(escape.dumps(result.to_dict(), indent=2) + "\n")
        except OSError as exc:
            raise WriteError(f"{report_path}: cannot write the report: {exc.strerror}") from None
    if weights_path is not None:
        written = export_weights(result.model, weights_path, model_path=result.output,
                                 protect=[model])
    echo(_summary(result))
    if weights_path is not None:
        echo(f"wrote {written}")
