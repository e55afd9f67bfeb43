"""A derived (higher-order) program run in two stages that share the first order.

A :class:`~.higher_order.DerivedGraph` recomputes the forward pass and the first backward
before its own part. A caller that needs the gradient first and decides from it whether it
needs the derived tensors (GradInit's constraint branch; NIO, whose Hessian-vector directions
are functions of every sub-batch's gradient) would otherwise pay for the first order twice.
:class:`StagedProgram` splits the derived graph at the first-order gradient graph it was built
on:

1. the gradient graph, with the tensors the rest consumes (activations, masks, first-order
   intermediates) as extra outputs, kept in onnxruntime's memory (:class:`Carry`);
2. the rest of the derived graph, fed those tensors and its own extra inputs.

Stage 1 alone is a gradient pass; stage 2 costs what the derived graph costs beyond it. The
values are those of the derived program (the same nodes on the same inputs). The split needs
every first-order node to appear unchanged in the derived graph and the onnxruntime backend;
:func:`staged_or_none` says None otherwise, and callers run the whole derived program.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from ..passes import types_and_shapes
from ..runtime import make_session, onnxruntime
from .higher_order import DerivedGraph
from .program import GradientProgram


@dataclass(frozen=True)
class Carry:
    """Stage 1's feeds, and the tensors it computed that stage 2 reads (by name, as
    onnxruntime values)."""

    feeds: dict[str, np.ndarray]
    values: dict[str, object]


def _signature(node: onnx.NodeProto) -> bytes:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.ClearField("name")
    copy.ClearField("doc_string")
    return copy.SerializeToString(deterministic=True)


def split(first: onnx.ModelProto, derived: onnx.ModelProto,
          outputs: Sequence[str]) -> tuple[list[str], onnx.ModelProto] | None:
    """(carried tensor names, the rest model computing ``outputs`` from the derived graph's
    inputs and the carried tensors), or None when a first-order node is not in ``derived``
    unchanged."""
    made = {name: node for node in first.graph.node for name in node.output if name}
    rest = []
    for node in derived.graph.node:
        names = [n for n in node.output if n]
        if names and all(n in made for n in names):
            if _signature(made[names[0]]) != _signature(node):
                return None
            continue
        rest.append(node)
    if any(name in made for name in outputs):
        return None  # the caller takes first-order tensors from stage 1
    used = {name for node in rest for name in node.input if name}
    carried = sorted(name for name in used if name in made)
    types, shapes = types_and_shapes(first)
    if any(name not in types for name in carried):
        return None
    inputs = [v for v in derived.graph.input if v.name in used]
    inputs += [helper.make_tensor_value_info(name, types[name], shapes.get(name))
               for name in carried]
    initializers = [t for t in derived.graph.initializer if t.name in used]
    declared = {v.name: v for v in derived.graph.output}
    out = [declared.get(name) or helper.make_tensor_value_info(
        name, derived.graph.output[0].type.tensor_type.elem_type, None) for name in outputs]
    model = helper.make_model(helper.make_graph(rest, "rest", inputs, out, initializers),
                              opset_imports=derived.opset_import, ir_version=derived.ir_version)
    return carried, model


class StagedProgram:
    """``first(feeds)``: (loss, {param: gradient}, Carry) from stage 1 (module docstring),
    ``feeds`` the gradient graph's inputs; ``rest(carry, extra)``: the derived tensors of
    ``roles`` from stage 2, ``extra`` the derived graph's own inputs by tensor name.
    ``transform``: a value-preserving rewrite applied to both stages' models before their
    sessions are made (:func:`~onnxinit.autodiff.scaled.rewrite`); feeds a stage does not read
    are dropped."""

    def __init__(self, program: GradientProgram, derived: DerivedGraph, carried: list[str],
                 rest: onnx.ModelProto, roles: Sequence[str],
                 transform: Callable[[onnx.ModelProto], onnx.ModelProto] | None = None):
        self.program, self.derived, self.roles = program, derived, tuple(roles)
        first = onnx.ModelProto()
        first.CopyFrom(program.graph.model)
        types, shapes = types_and_shapes(first)
        declared = {v.name for v in first.graph.output}
        first.graph.output.extend(
            helper.make_tensor_value_info(name, types[name], shapes.get(name))
            for name in carried if name not in declared)
        self._first_outputs = [v.name for v in first.graph.output]
        self._count = 1 + len(program.wrt)
        if transform is not None:
            first, rest = transform(first), transform(rest)
        self._first_inputs = frozenset(v.name for v in first.graph.input)
        self._first = make_session(first, device=program.device, threads=program.threads)
        self._rest = make_session(rest, device=program.device, threads=program.threads)
        self._rest_inputs = frozenset(v.name for v in rest.graph.input)
        self._carried = carried
        self._ort = onnxruntime()

    def _values(self, feeds: Mapping[str, np.ndarray]) -> dict[str, object]:
        return {name: self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value))
                for name, value in feeds.items()}

    def first(self, feeds: Mapping[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray],
                                                               Carry]:
        results = self._first.run_with_ort_values(
            self._first_outputs,
            self._values({k: v for k, v in feeds.items() if k in self._first_inputs}))
        first = [value.numpy() for value in results[:self._count]]
        named = dict(zip(self._first_outputs, results))
        carry = {name: named[name] for name in self._carried}
        return (float(first[0]), dict(zip(self.program.wrt, first[1:])),
                Carry(dict(feeds), carry))

    def rest(self, carry: Carry, extra: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._values({k: v for k, v in {**carry.feeds, **extra}.items()
                               if k in self._rest_inputs})
        values.update({name: carry.values[name] for name in self._carried})
        outputs = [self.derived.tensors[role] for role in self.roles]
        results = self._rest.run_with_ort_values(outputs, values)
        return {role: value.numpy() for role, value in zip(self.roles, results)}


def _string_inputs(model: onnx.ModelProto) -> bool:
    return any(v.type.tensor_type.elem_type == onnx.TensorProto.STRING for v in model.graph.input)


def staged_or_none(program: GradientProgram, derived: DerivedGraph, roles: Sequence[str],
                   transform: Callable[[onnx.ModelProto], onnx.ModelProto] | None = None
                   ) -> StagedProgram | None:
    """The two-stage form of ``derived`` computing ``roles`` (derived tensors, not the loss or
    first-order gradients, which stage 1 gives), or None where it cannot be split or does not
    run on onnxruntime. ``transform``: see :class:`StagedProgram`."""
    if program.backend != "onnxruntime" or _string_inputs(program.graph.model):
        return None  # (onnxruntime makes no OrtValue of a string array: the plain path feeds it)
    parts = split(program.graph.model, derived.model,
                  [derived.tensors[role] for role in roles])
    if parts is None:
        return None
    return StagedProgram(program, derived, parts[0], parts[1], roles, transform)
