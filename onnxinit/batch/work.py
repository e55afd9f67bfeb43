"""The work of ``check``, ``analyze`` and ``rescale`` on one model, as functions of (path,
options) that return a JSON-able payload: what a worker process or a Ray task sends back, what
``--jsonl`` records, and what the command prints from.

Options are plain JSON (shapes as lists) so that they hash into the ``--resume`` key.

- ``check_model``: the model's entry of ``check --format json`` (``status`` passed, failed or
  unreadable; findings, summary, warnings).
- ``analyze_model``: ``{"analysis": <analyze --json>, "text": <the table and summary>}``.
- ``rescale_model``: ``{"report": <rescale --report>, "text": <the summary printed>,
  "output": <the model written or null>}``; writes the model (and the report and weights
  when asked) as ``rescale`` does.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from .. import escape
from ..analysis import analyze
from ..errors import InvalidOptionError, WriteError
from ..lazy import lazy_module
from ..report import analysis_summary, analysis_table, rescale_summary
from .results import UNREADABLE

# each imported by the command that needs it: analyze does not pay for the rescale methods
_backward = lazy_module("onnxinit.backward")
_check = lazy_module("onnxinit.check")
_check_formats = lazy_module("onnxinit.check_formats")
_content = lazy_module("onnxinit.reporting.content")
_plot = lazy_module("onnxinit.reporting.plot")
_rescale = lazy_module("onnxinit.rescale")
_weights = lazy_module("onnxinit.weights")

log = logging.getLogger("onnxinit")


def _shapes(options: dict) -> dict[str, tuple[int, ...]]:
    return {name: tuple(dims) for name, dims in (options.get("input_shapes") or {}).items()}


def _stats(options: dict) -> dict[str, tuple[float, float]]:
    return {name: tuple(value) for name, value in (options.get("stats") or {}).items()}


def check_model(path: str, options: dict) -> dict:
    """``check`` of one model; options: max_growth, min_var, strict, batch_size, input_shapes,
    stats, gradients (default True), max_gradient_ratio, min_gradient_ratio. A model that
    cannot be read or analysed has status unreadable; one whose gradients cannot be predicted
    is judged without them, with a warning."""
    start = time.perf_counter()
    analysis = analyze(path, input_shapes=_shapes(options),
                       batch_size=options.get("batch_size", 32), stats=_stats(options),
                       max_growth=options["max_growth"], min_var=options["min_var"])
    if options.get("gradients", True):
        # as analyze(backward=True) does; a model no loss can be put on (its output's shape is
        # not static, or no float output depends on the inputs) is still judged forward
        try:
            analysis.backward = _backward.predict_backward(analysis.propagation, "cross_entropy")
        except InvalidOptionError as exc:
            analysis.warnings.append(f"gradients not analysed, ONNXINIT005/006 not judged: {exc}")
    ratios = {k: options[k] for k in ("max_gradient_ratio", "min_gradient_ratio") if k in options}
    findings = _check.find(analysis, strict=options.get("strict", False), **ratios)
    result = _check_formats.ModelResult.of_analysis(path, findings, analysis)
    log.info("checked %s in %.2f s: %s, %d findings", path, time.perf_counter() - start,
             result.status, len(result.findings))
    return result.to_json()


check_model.error_status = UNREADABLE


def analyze_model(path: str, options: dict) -> dict:
    """``analyze`` of one model; options: input_shapes, batch_size, stats, measure, seed,
    device, backward, loss, loss_output, plot (a .png or .svg file to draw the variance by depth
    in)."""
    result = analyze(path, input_shapes=_shapes(options),
                     batch_size=options.get("batch_size", 32), stats=_stats(options),
                     measure=options.get("measure", False), seed=options.get("seed", 0),
                     device=options.get("device") or "auto",
                     backward=options.get("backward", False),
                     loss=options.get("loss") or "cross_entropy",
                     loss_output=options.get("loss_output"))
    text = analysis_table(result) + "\n\n" + analysis_summary(result)
    if options.get("plot"):
        text += f"\nwrote {_plot.write_plot(_content.build(result), options['plot'])}"
    return {"analysis": result.to_dict(), "text": text}


def rescale_model(path: str, options: dict) -> dict:
    """``rescale`` of one model; options: method, output, in_place, write, input_shapes,
    batch_size, seed, report, export_weights, ``method_options`` (by keyword name) and
    ``before`` (default True: the report holds the variances of the model as given, one more
    propagation)."""
    result = _rescale.rescale(path, options.get("method", "autoinit"),
                              output=options.get("output"),
                              in_place=options.get("in_place", False),
                              write=options.get("write", True), input_shapes=_shapes(options),
                              batch_size=options.get("batch_size", 32),
                              seed=options.get("seed", 0),
                              **(options.get("method_options") or {}))
    report = result.to_dict(before=options.get("before", True))
    if options.get("report"):
        target = Path(options["report"])
        try:
            target.write_text(escape.dumps(report, indent=2) + "\n")
        except OSError as exc:
            raise WriteError(f"{target}: cannot write the report: {exc.strerror}") from None
    text = rescale_summary(result)
    if options.get("export_weights"):
        written = _weights.export_weights(result.model, options["export_weights"],
                                 model_path=result.output, protect=[path])
        text += f"\nwrote {written}"
    return {"report": report, "text": text,
            "output": str(result.output) if result.output else None}
