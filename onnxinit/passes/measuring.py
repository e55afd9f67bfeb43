"""Running a model to see its intermediate tensors: every tensor asked for becomes a graph
output; the run-to-measure fallback for shapes that inference could not give."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np
import onnx
from onnx import helper

from ..runtime import make_session
from .base import model_pass

MAX_RUN_IR_VERSION = 10  # onnxruntime reads at most IR 13; onnx writes newer by default


@model_pass(in_place=False)
def with_outputs(model: onnx.ModelProto, tensors: Iterable[str],
                 types: Mapping[str, int]) -> onnx.ModelProto:
    """A copy of ``model`` that also returns ``tensors`` (element types from ``types``), less
    those of no known element type (a sequence of tensors: onnxruntime refuses a model output
    of undefined type, and would run none of the others)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    existing = {o.name for o in out.graph.output}
    for name in tensors:
        if name not in existing and types.get(name, 0):
            out.graph.output.append(helper.make_tensor_value_info(name, types.get(name, 0), None))
            existing.add(name)
    out.ir_version = min(out.ir_version, MAX_RUN_IR_VERSION)
    return out


@model_pass(in_place=False)
def measured_shapes(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray],
                    tensors: Iterable[str], types: Mapping[str, int],
                    prepare: Callable[[onnx.ModelProto], None] | None = None
                    ) -> dict[str, tuple]:
    """Shapes of ``tensors`` seen in one onnxruntime run of ``model`` on ``feeds`` (the
    fallback where shape inference could not give them), ``prepare`` applied in place to the
    copy that runs. Raises what onnxruntime raises."""
    tensors = list(tensors)
    run = with_outputs(model, tensors, types)
    if prepare is not None:
        prepare(run)
    session = make_session(run, device="cpu")
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, dict(feeds))
    wanted = set(tensors)
    return {n: tuple(np.shape(v)) for n, v in zip(names, values) if n in wanted}
