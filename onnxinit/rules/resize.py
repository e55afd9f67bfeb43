"""Resize (and Upsample, its form below opset 10): a map's nearest or linear resize keeps its
position classes and correlation (:mod:`.resize_classes`); elsewhere nearest copies keep the
statistics."""

from __future__ import annotations

from ..spatial import drop
from .context import RuleContext, RuleError, signal
from .registry import rule
from .resize_classes import resized


@rule("Resize", "Upsample")
def resize(inputs, ctx: RuleContext):
    """A map's nearest or linear resize with its classes and correlation (:mod:`.resize_classes`);
    else nearest copies (statistics kept, tracked axes not resized); cubic is measured."""
    x = signal(inputs, 0)
    if (out := resized(x, ctx)) is not None:
        return [out]
    if ctx.attr("mode", "nearest") != "nearest":
        raise RuleError(f"{ctx.attr('mode')} interpolation")
    in_shape, out_shape = ctx.in_shape(0), ctx.out_shape(0)
    for a in x.tracked_axes():
        if in_shape[a - x.rank + len(in_shape)] != out_shape[a - x.rank + len(in_shape)]:
            raise RuleError("a tracked axis is resized")
    return [x if tuple(in_shape) == tuple(out_shape) else drop(x)]
