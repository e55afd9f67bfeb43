"""``onnxinit rescale``."""

from __future__ import annotations

import os
import sys
from importlib.util import find_spec
from pathlib import Path

import click

from ..batch.api import without_outputs
from ..batch.paths import find_models, one_file
from ..batch.results import Result, exit_status
from ..batch.work import rescale_model
from ..errors import InvalidOptionError, OnnxInitError, WriteError
from ..methods import METHODS, option_fields, parse_methods, refuse_unread
from ..methods.options import option_name
from ..rescale import output_path
from ..weights import check_target, format_for
from ._common import echo, error_line, logging_options, model_options, seed_option
from ._params import GroupedCommand, GroupedOption, Number
from .batch_options import batch_options, run_models
from .specs import specs_per_model


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
                "package, a dependency of onnxinit that is not installed here (pip install "
                "safetensors), or give --export-weights a .npz file")
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
               "data-driven methods (lsuv, gradinit, metainit, nio).", many=True)
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
@batch_options
@logging_options
def rescale(models, input_shapes, batch_size, method, output, in_place, dry_run, report_path,
            weights_path, seed, batch, **method_values):
    """Rescale the weights of MODEL and write a new ONNX file.

    Several models, folders (every *.onnx under them, less the outputs of an earlier rescale
    with the same method) and patterns are each written beside their input (or over it with
    --in-place); -o, --report and --export-weights name one file and so take one MODEL
    (--jsonl records every model's report).

    \b
    Examples:
      onnxinit rescale model.onnx                       # -> model.autoinit.onnx
      onnxinit rescale model.onnx --method autoinit --target-var 0.5 -o out.onnx
      onnxinit rescale model.onnx --report scales.json --dry-run
      onnxinit rescale models/ --jobs 2 --jsonl rescaled.jsonl
    """
    refuse_unread(parse_methods(method), method_values)
    single = one_file(list(models))
    paths = find_models(models) if single else without_outputs(find_models(models), method)
    files = (("-o/--output", output), ("--report", report_path),
             ("--export-weights", weights_path))
    if not single and (given := [name for name, value in files if value]):
        raise InvalidOptionError(f"{given[0]} names one file, so it takes one MODEL; several "
                                 "models are each written beside their input (--jsonl FILE "
                                 "records every model's report)")
    for path in paths:
        _check_files(path, method, output, in_place, dry_run, report_path, weights_path)
    shapes_for, _ = specs_per_model(paths, input_shapes, ())
    chosen = {name: value for name, value in method_values.items() if value is not None}

    def options_for(model: str) -> dict:
        options = {"method": method, "output": output and str(output), "in_place": in_place,
                   "write": not dry_run, "input_shapes": shapes_for(model),
                   "batch_size": batch_size, "seed": seed,
                   "report": report_path and str(report_path),
                   "export_weights": weights_path and str(weights_path),
                   "method_options": chosen}
        if not (report_path or batch.jsonl):
            # nothing records the variances of the model as given: skip their propagation
            # (the key only when False, so --resume keys of --jsonl runs are unchanged)
            options["before"] = False
        return options

    if single:
        result = run_models(paths, rescale_model, options_for, "rescale", batch)[0]
        if result.payload is None:
            raise OnnxInitError(result.error)
        echo(result.payload["text"])
        return

    def report(result: Result) -> None:
        echo(result.payload["text"] if result.payload else error_line(result.error),
             err=result.payload is None)

    results = run_models(paths, rescale_model, options_for, "rescale", batch, report)
    sys.exit(exit_status(results))
