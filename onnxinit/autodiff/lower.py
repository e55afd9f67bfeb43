"""Lowering a model to the primitive ops that have backward rules.

- the default-domain opset is raised to at least 18 (axes of reductions and Split sizes are
  inputs from there on), with onnx's version converter;
- graph inputs get the concrete shapes of this run;
- BatchNormalization becomes primitives with batch statistics (training semantics):
  ``y = gamma (x - mean_b) / sqrt(var_b + eps) + beta`` with the biased variance over the batch
  and spatial axes (:func:`onnxinit.passes.batch_statistics`);
- Dropout becomes Identity, or with ``dropout=True`` a multiplication by a fixed mask drawn
  from ``seed`` (scaled by 1 / (1 - ratio)), so repeated passes see the same function
  (:func:`onnxinit.passes.fixed_dropout`);
- model-local functions, and every op whose ONNX schema has a function body but which has no
  backward rule of its own (LayerNormalization, Gelu, HardSwish, GroupNormalization, Mish,
  Elu, Selu, ...), are inlined; ops with a rule (Softmax, LogSoftmax, Relu, ...) stay as they
  are, as inlining them would only make the graph slower.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnx.inliner
from onnx import helper, version_converter

from ..errors import UnsupportedModelError
from ..passes import (
    MAX_FOLDED_ELEMENTS,
    batch_statistics,
    fixed_dropout,
    set_input_shapes,
    types_and_shapes,
)
from .backward import RULES

MIN_OPSET = 18
MAX_INLINE_ROUNDS = 8


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise UnsupportedModelError("model imports no default-domain (ai.onnx) opset")


def _with_min_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    if default_opset(model) >= MIN_OPSET:
        return model
    try:
        return version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:  # noqa: BLE001 - the converter raises plain RuntimeError and others
        raise UnsupportedModelError(
            f"cannot upgrade the model from opset {default_opset(model)} to {MIN_OPSET} for "
            f"autodiff: {exc}"
        ) from None


def _prepare(model: onnx.ModelProto, input_shapes, dropout: bool, seed: int) -> None:
    """Static input shapes, then training semantics (the passes of :mod:`onnxinit.passes`)."""
    set_input_shapes(model, input_shapes, require_all=True)
    model.graph.ClearField("value_info")  # declared for other input shapes
    types, shapes = types_and_shapes(model)
    batch_statistics(model, shapes, types)
    fixed_dropout(model, seed=seed if dropout else None, shapes=shapes, types=types)


# Composite ops kept as they are: onnxruntime runs them natively and they carry no gradient
# (Range's schema body is a Loop, which would hide a shape computation from constant folding).
NOT_INLINED = frozenset({"Range"})


def _composite_ops_without_rules(model: onnx.ModelProto) -> list[tuple[str, str]]:
    opset = default_opset(model)
    found = set()
    for node in model.graph.node:
        if (node.domain not in ("", "ai.onnx") or node.op_type in RULES
                or node.op_type in NOT_INLINED):
            continue
        try:
            schema = onnx.defs.get_schema(node.op_type, opset)
        except onnx.defs.SchemaError:
            continue
        if schema.has_function or schema.has_context_dependent_function:
            found.add((node.domain, node.op_type))
    return sorted(found)


def _type_initializers(graph: onnx.GraphProto) -> None:
    """The inliner needs a type for every initializer it meets (else: 'Type unknown')."""
    typed = {v.name for v in [*graph.input, *graph.value_info, *graph.output]}
    for init in graph.initializer:
        if init.name not in typed:
            graph.value_info.append(
                helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))


def _fill_default_attributes(graph: onnx.GraphProto, selected, opset: int) -> None:
    """Spell out defaulted attributes: the inliner drops a body's reference to an attribute the
    node leaves unset (Selu's alpha would become an empty Constant)."""
    op_types = {op_type for _, op_type in selected}
    for node in graph.node:
        if node.op_type not in op_types or node.domain not in ("", "ai.onnx"):
            continue
        present = {a.name for a in node.attribute}
        schema = onnx.defs.get_schema(node.op_type, opset)
        for name, attribute in schema.attributes.items():
            if name not in present and attribute.default_value.name:
                node.attribute.append(attribute.default_value)


def _inline_composites(model: onnx.ModelProto) -> onnx.ModelProto:
    large = [init for init in model.graph.initializer
             if int(np.prod(init.dims)) > MAX_FOLDED_ELEMENTS]
    if large:  # the inliner serializes the model: leave the weights out meanwhile
        names = {init.name for init in large}
        kept = [init for init in model.graph.initializer if init.name not in names]
        model.graph.ClearField("initializer")
        model.graph.initializer.extend(kept)
        model.graph.value_info.extend(
            helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
            for init in large)
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    for _ in range(MAX_INLINE_ROUNDS):
        selected = _composite_ops_without_rules(model)
        if not selected:
            break
        _type_initializers(model.graph)
        _fill_default_attributes(model.graph, selected, default_opset(model))
        model = onnx.inliner.inline_selected_functions(model, selected,
                                                       inline_schema_functions=True)
    else:
        raise UnsupportedModelError("inlining composite ops did not terminate")
    model.graph.initializer.extend(large)
    return model


def lower(
    model: onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]],
    *,
    dropout: bool = False,
    seed: int = 0,
) -> onnx.ModelProto:
    """A copy of ``model`` made of primitive ops with backward rules (see the module doc)."""
    lowered = onnx.ModelProto()
    lowered.CopyFrom(model)
    lowered = _with_min_opset(lowered)
    _prepare(lowered, input_shapes, dropout, seed)
    lowered = _inline_composites(lowered)
    lowered.graph.ClearField("value_info")
    return lowered
