"""Human-readable renderings of analysis results (JSON is ``Analysis.to_dict``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import escape

if TYPE_CHECKING:  # annotations only: analyze's table must not import the rescale methods
    from .analysis import Analysis
    from .rescale import RescaleResult


def format_number(x: float | None) -> str:
    """A number in a table: 4 significant digits, scientific notation outside [1e-3, 1e5)."""
    if x is None:
        return "-"
    if x == 0 or (1e-3 <= abs(x) < 1e5):
        return f"{x:.4g}"
    return f"{x:.3e}"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1):]


def analysis_table(analysis: Analysis, width: int = 40) -> str:
    """One row per float activation: tensor, op, shape, mean, var, growth, flag (and measured).

    The output of a residual block's Add is marked ``res<k>`` (k-th block, in topological
    order) in the ``block`` column."""
    measured = any(t.measured_var is not None for t in analysis.tensors)
    block_of = {block.output: f"res{k}" for k, block in enumerate(analysis.residual_blocks)}
    header = ["#", "tensor", "op", "shape", "mean", "var", "growth"]
    if measured:
        header += ["meas. mean", "meas. var", "rel.err"]
    gradients = analysis.backward.tensors if analysis.backward is not None else None
    grad_measured = gradients is not None and any(
        g.measured_var is not None for g in gradients.values())
    if gradients is not None:
        header += ["grad var"]
        if grad_measured:
            header += ["meas. grad var", "grad err"]
    if block_of:
        header.append("block")
    header.append("flag")
    rows = []
    for i, t in enumerate(analysis.tensors):
        shape = "x".join(map(str, t.shape)) if t.shape else "?"
        row = [str(i), _clip(escape.text(t.name), width), escape.text(t.op), shape,
               format_number(t.mean), format_number(t.var), format_number(t.growth)]
        if measured:
            err = t.relative_error
            row += [format_number(t.measured_mean), format_number(t.measured_var),
                    "-" if err is None else f"{100 * err:.1f}%"]
        if gradients is not None:
            g = gradients.get(t.name)
            row.append(format_number(g.var) if g is not None else "-")
            if grad_measured:
                err = g.relative_error if g is not None else None
                row += [format_number(g.measured_var if g is not None else None),
                        "-" if err is None else f"{100 * err:.1f}%"]
        if block_of:
            row.append(block_of.get(t.name, ""))
        flag = t.flag or ""
        if t.rule in ("empirical", "pass-through"):
            flag = (flag + " " if flag else "") + f"[{t.rule}]"
        row.append(flag)
        rows.append(row)
    widths = [max(len(h), *(len(r[k]) for r in rows)) if rows else len(h)
              for k, h in enumerate(header)]
    numeric = {"mean", "var", "growth", "meas. mean", "meas. var", "rel.err", "#", "grad var",
               "meas. grad var", "grad err"}

    def line(cells):
        return "  ".join(
            c.rjust(w) if h in numeric else c.ljust(w) for c, w, h in zip(cells, widths, header)
        ).rstrip()

    out = [line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def analysis_summary(analysis: Analysis) -> str:
    tensors = analysis.tensors
    if not tensors:
        return "no float activations"
    by_name = {t.name: t for t in tensors}  # the first float output, not the last node's
    last = next((by_name[o] for o in analysis.graph.output_names if o in by_name), tensors[-1])
    exploding = [t for t in tensors if t.flag == "exploding"]
    vanishing = [t for t in tensors if t.flag == "vanishing"]
    # growth is relative to the float inputs' variance; token ids have none to compare with
    relative = (f" ({format_number(last.growth)}x the input)"
                if any("var" in entry for entry in analysis.inputs.values()) else "")
    lines = [
        (f"{escape.text(analysis.model)}: {len(tensors)} float tensors; output "
         f"'{escape.text(last.name)}' var {format_number(last.var)}{relative}")
    ]
    if exploding:
        lines.append(
            f"  exploding (> {analysis.max_growth:g}x input var): {len(exploding)} tensors, "
            f"first '{escape.text(exploding[0].name)}'"
        )
    if vanishing:
        lines.append(
            f"  vanishing (< {analysis.min_var:g}x input var): {len(vanishing)} tensors, "
            f"first '{escape.text(vanishing[0].name)}'"
        )
    if analysis.residual_blocks:
        depths = sorted({b.depth for b in analysis.residual_blocks})
        identity = sum(b.identity_skip for b in analysis.residual_blocks)
        lines.append(
            f"  residual blocks: {len(analysis.residual_blocks)} ({identity} with identity skip; "
            f"branch depth {', '.join(map(str, depths))})"
        )
    errors = [t.relative_error for t in tensors if t.relative_error is not None]
    if errors:
        errors = np.array(errors)
        lines.append(
            f"  predicted vs measured variance: {np.mean(errors < 0.10) * 100:.1f}% within 10%, "
            f"median error {np.median(errors) * 100:.1f}%, worst {errors.max() * 100:.1f}%"
        )
    if analysis.backward is not None:
        lines += _gradient_lines(analysis)
    return "\n".join(lines)


def _gradient_lines(analysis: Analysis) -> list[str]:
    backward = analysis.backward
    lines = [f"  gradients ({backward.loss} loss): {len(backward.tensors)} tensors, "
             f"{len(backward.parameters)} parameter uses"]
    if backward.warnings:
        lines.append(f"  gradients taken unchanged through {len(backward.warnings)} node(s) "
                     f"without a backward rule: {escape.text(backward.warnings[0])}")
    ratios = [p for p in backward.parameters if p.role == "weight" and p.update_ratio]
    if ratios:
        lo = min(ratios, key=lambda p: p.update_ratio)
        hi = max(ratios, key=lambda p: p.update_ratio)
        lines.append(f"  weight update ratio rms(dL/dW)/rms(W): {format_number(lo.update_ratio)} "
                     f"('{escape.text(lo.name)}') to {format_number(hi.update_ratio)} "
                     f"('{escape.text(hi.name)}')")
    errors = [g.relative_error for g in backward.tensors.values()
              if g.relative_error is not None]
    if errors:
        errors = np.array(errors)
        lines.append(
            f"  predicted vs measured gradient variance: {np.mean(errors < 0.20) * 100:.1f}% "
            f"within 20%, median error {np.median(errors) * 100:.1f}%, worst "
            f"{errors.max() * 100:.1f}%")
    return lines


def rescale_summary(result: RescaleResult) -> str:
    """What ``rescale`` did: the file written, the scales, each method's report, the
    predicted output variances after (and before, when the result has computed them)."""
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
    if result.before_known:
        for name, before in result.outputs_var_before.items():
            after = result.outputs_var_after.get(name, float("nan"))
            lines.append(f"  predicted output var of {name!r}: {before:.4g} -> {after:.4g}")
    else:  # the model as given would take one more propagation (--report has it)
        for name, after in result.outputs_var_after.items():
            lines.append(f"  predicted output var of {name!r} after rescaling: {after:.4g}")
    if result.left_as_initialised:
        ops = sorted({op for ops in result.left_as_initialised.values() for op in ops.split(", ")})
        count = len(result.left_as_initialised)
        lines.append(
            f"  note: {count} parameter{'s' if count > 1 else ''} of recurrent layers "
            f"({', '.join(ops)}) left as initialised: the methods rescale Conv, ConvTranspose, "
            "Gemm and MatMul weights (--report lists them)")
    if scales or replaced:
        lines.append(LEARNING_RATE_NOTE)
    return "\n".join(lines)


# measured by benchmarks/training_benefit.py (README "Measured": a 24-layer MLP, a VGG net,
# ResNet-20/32 and ResNet-50 without normalization): after kaiming, autoinit, lsuv or idinit the
# best rate was 1x-10x below the default init's on the MLP, the VGG net and ResNet-20/32, but
# 1x-10x above it on ResNet-50, whose default init is already fan-scaled; after gradinit,
# metainit or nio 3x below to 30x above
LEARNING_RATE_NOTE = (
    "  note: sweep the training learning rate of a rescaled network: in our benchmarks its best "
    "rate moved from 10x below to 10x above the default init's (most often below after kaiming, "
    "autoinit, lsuv or idinit; at or above after gradinit, metainit or nio)")


def _method_lines(method: str, report: dict) -> list[str]:
    """A data-driven method's objective before -> after and the tensors it moved most."""
    lines = []
    before, after = report.get("before"), report.get("after")
    if isinstance(before, dict) and isinstance(after, dict):
        parts = [f"{k} {before[k]:.4g} -> {after[k]:.4g}" for k in before
                 if k in after and isinstance(before[k], (int, float))]
        if parts:
            kept = report.get("kept_iteration")
            lines.append(f"  {method} (held-out batches, kept iteration {kept}): "
                         f"{', '.join(parts)}")
    if report.get("stopped"):
        lines.append(f"  {method} stopped early: {report['stopped']}")
    moved = report.get("moved_most") or []
    if moved:
        lines.append(f"  {method} moved most: " + ", ".join(
            f"{m['tensor']} x{m['scale']:.3g}" for m in moved[:3]))
    return lines
