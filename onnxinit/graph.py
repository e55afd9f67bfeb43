"""ModelGraph: a loaded ONNX model with static shapes, constants, parameters and a networkx view.

Preconditions: a path to an ONNX file (external data beside it) or a ModelProto.
Postconditions: every graph input has a concrete shape (symbolic dims resolved from
``input_shapes`` / ``batch_size``); shape inference has run; each tensor is classified as a
*signal* (float activation), a *constant* (initializer, Constant, or computed only from constants
and static shapes, e.g. the exporter's Shape/Gather/Concat subgraphs) or an integer tensor.
Rules only ever see signals as inputs with moments.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import networkx as nx
import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ._loading import read_model
from .errors import InvalidOptionError, ModelLoadError

log = logging.getLogger("onnxinit")

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}

# Ops whose output is random, so it is never constant even when its inputs are.
RANDOM_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
              "Bernoulli", "Multinomial", "Dropout"}

# Ops that move a constant around without mixing values: a parameter seen through them is still
# the same parameter, scaled by the same factor.
LAYOUT_OPS = {"Identity", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast",
              "CastLike", "Expand", "Tile"}

# Input positions that hold learnable parameters (not running statistics), by op.
PARAMETER_ROLES: dict[str, dict[int, str]] = {
    "Conv": {1: "weight", 2: "bias"},
    "ConvTranspose": {1: "weight", 2: "bias"},
    "Gemm": {0: "weight", 1: "weight", 2: "bias"},
    "MatMul": {0: "weight", 1: "weight"},
    "Gather": {0: "embedding"},
    "BatchNormalization": {1: "scale", 2: "shift"},
    "InstanceNormalization": {1: "scale", 2: "shift"},
    "LayerNormalization": {1: "scale", 2: "shift"},
    "GroupNormalization": {1: "scale", 2: "shift"},
    "RMSNormalization": {1: "scale"},
    "SkipLayerNormalization": {2: "scale", 3: "shift", 4: "bias"},
    "PRelu": {1: "slope"},
    "Add": {0: "bias", 1: "bias"},
    "Sub": {0: "bias", 1: "bias"},
    "Mul": {0: "scale", 1: "scale"},
    "Div": {1: "scale"},
}
WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}



@dataclass
class Parameter:
    """A float initializer that reaches a signal-consuming node (a learnable tensor)."""

    name: str
    shape: tuple[int, ...]
    dtype: int
    uses: list[tuple[str, int, str]] = field(default_factory=list)  # (node id, input index, role)

    @property
    def roles(self) -> set[str]:
        return {role for _, _, role in self.uses}


def _implicit_inputs(node: onnx.NodeProto) -> list[str]:
    """Outer-scope tensors read inside a node's subgraphs (If/Loop/Scan bodies)."""
    names: list[str] = []
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            defined = {i.name for i in g.input} | {t.name for t in g.initializer}
            for inner in g.node:
                for name in list(inner.input) + _implicit_inputs(inner):
                    if name and name not in defined and name not in names:
                        names.append(name)
                defined.update(inner.output)
    return names


def _shape_of(type_proto: onnx.TypeProto) -> tuple | None:
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    dims = []
    for d in type_proto.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
    return tuple(dims)


def _static(shape) -> bool:
    return shape is not None and all(isinstance(d, int) and d >= 0 for d in shape)


_INT_TYPES = {TensorProto.INT64, TensorProto.INT32, TensorProto.INT16, TensorProto.INT8,
              TensorProto.UINT64, TensorProto.UINT32, TensorProto.UINT16, TensorProto.UINT8}
_FOLD_CAP = 1 << 16  # elements of a folded shape-like constant handed to shape inference


def helper_value_info(name: str, value: np.ndarray) -> onnx.ValueInfoProto:
    return onnx.helper.make_tensor_value_info(
        name, onnx.helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape)
    )


def _informative(vi: onnx.ValueInfoProto) -> int:
    """How much a value_info says: 0 nothing, 1 a type, 2 a rank, 3 a static shape."""
    if not vi.type.HasField("tensor_type"):
        return 0
    shape = _shape_of(vi.type)
    return 1 if shape is None else 3 if _static(shape) else 2


def _keep_declared(graph: onnx.GraphProto, declared, replace=None) -> bool:
    """Merge ``declared`` value_info into ``graph``'s: a declared entry is kept where inference
    has none or a less precise one (custom-op outputs whose shapes the exporter declared).
    With ``replace``, ``graph``'s value_info becomes ``replace`` first. True if any was kept."""
    changed = False
    if replace is not None:
        del graph.value_info[:]
        graph.value_info.extend(replace)
    known = {vi.name: i for i, vi in enumerate(graph.value_info)}
    outputs = {o.name for o in graph.output} | {i.name for i in graph.input}
    for vi in declared:
        if vi.name in outputs:
            continue
        i = known.get(vi.name)
        if i is None:
            graph.value_info.append(vi)
            known[vi.name] = len(graph.value_info) - 1
            changed = True
        elif _informative(vi) > _informative(graph.value_info[i]):
            graph.value_info[i].CopyFrom(vi)
            changed = True
    return changed


class ModelGraph:
    """An ONNX model prepared for analysis. Build with :func:`load`."""

    def __init__(
        self,
        model: onnx.ModelProto,
        *,
        path: Path | None = None,
        external: Mapping[str, str] | None = None,
        input_shapes: Mapping[str, tuple[int, ...]] | None = None,
        batch_size: int = 32,
        default_length: int = 128,
    ):
        self.source = model  # the model as given: write-back edits a copy of this
        self.path = path
        self.external = dict(external or {})
        self.name = str(path) if path else (model.graph.name or "<model>")
        self.warnings: list[str] = []
        self.batch_size = batch_size
        self.opset = next(
            (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0
        )
        if self.opset == 0:
            raise ModelLoadError(f"{self.name}: the model imports no default-domain opset")

        self.initializers = {t.name: t for t in model.graph.initializer}
        self.input_names = [i.name for i in model.graph.input if i.name not in self.initializers]
        self.output_names = [o.name for o in model.graph.output]
        self.input_shapes = self._resolve_input_shapes(
            dict(input_shapes or {}), batch_size, default_length
        )
        self._values: dict[str, np.ndarray] = {}
        self.model = self._infer_shapes(model)
        self._index_tensors()
        self._index_nodes()
        self._classify_tensors()
        self._refine_shapes()
        self._fill_missing_shapes()

    # construction steps -----------------------------------------------------------------------

    def _resolve_input_shapes(self, given, batch_size, default_length):
        unknown = set(given) - set(self.input_names)
        if unknown:
            raise InvalidOptionError(
                f"--input-shape names {', '.join(sorted(unknown))}, not an input of {self.name} "
                f"(inputs: {', '.join(self.input_names)})"
            )
        shapes = {}
        for inp in self.model_inputs():
            declared = _shape_of(inp.type)
            if inp.name in given:
                shape = given[inp.name]
                if declared is not None and (
                    len(declared) != len(shape)
                    or any(isinstance(d, int) and d != s for d, s in zip(declared, shape))
                ):
                    raise InvalidOptionError(
                        f"--input-shape {inp.name}:{'x'.join(map(str, shape))} does not match "
                        f"the declared shape {declared} of input {inp.name!r}"
                    )
                shapes[inp.name] = tuple(shape)
                continue
            if declared is None:
                raise InvalidOptionError(
                    f"{self.name}: input {inp.name!r} has no declared shape; "
                    f"give one with --input-shape {inp.name}:DIMS"
                )
            dims = []
            for axis, d in enumerate(declared):
                if isinstance(d, int) and d > 0:
                    dims.append(d)
                elif axis == 0:
                    dims.append(batch_size)
                else:
                    dims.append(default_length)
                    self.warnings.append(
                        f"input {inp.name!r} axis {axis} ({d or 'unnamed'}) is symbolic; using "
                        f"{default_length} (set it with --input-shape {inp.name}:DIMS)"
                    )
            shapes[inp.name] = tuple(dims)
        return shapes

    def model_inputs(self) -> list[onnx.ValueInfoProto]:
        return [i for i in self.source.graph.input if i.name not in self.initializers]

    def _infer_shapes(self, model: onnx.ModelProto) -> onnx.ModelProto:
        work = onnx.ModelProto()
        work.CopyFrom(model)
        for inp in work.graph.input:
            if inp.name in self.input_shapes:
                shape = inp.type.tensor_type.shape
                shape.ClearField("dim")
                for d in self.input_shapes[inp.name]:
                    shape.dim.add().dim_value = d
        declared = self._resolved(list(work.graph.value_info))
        del work.graph.value_info[:]
        try:
            inferred = onnx.shape_inference.infer_shapes(work, data_prop=True)
        except Exception as exc:  # noqa: BLE001 - onnx raises unrelated types; best effort
            self.warnings.append(f"shape inference failed ({exc}); shapes measured instead")
            _keep_declared(work.graph, declared)
            return work
        if _keep_declared(inferred.graph, declared):
            # declared shapes filled gaps (custom-op outputs): infer again from them
            try:
                inferred = onnx.shape_inference.infer_shapes(inferred, data_prop=True)
            except Exception as exc:  # noqa: BLE001 - keep the first inference
                log.debug("shape inference from declared value_info failed: %s", exc)
        return inferred

    def _resolved(self, infos: list[onnx.ValueInfoProto]) -> list[onnx.ValueInfoProto]:
        """Declared value_info with the inputs' symbolic dims (``batch``...) replaced by the
        values chosen for them."""
        names = {}
        for inp in self.model_inputs():
            declared = _shape_of(inp.type) or ()
            for d, v in zip(declared, self.input_shapes.get(inp.name, ())):
                if isinstance(d, str) and d:
                    names.setdefault(d, v)
        out = []
        for vi in infos:
            vi2 = onnx.ValueInfoProto()
            vi2.CopyFrom(vi)
            if vi2.type.HasField("tensor_type") and vi2.type.tensor_type.HasField("shape"):
                for dim in vi2.type.tensor_type.shape.dim:
                    if dim.HasField("dim_param") and dim.dim_param in names:
                        dim.dim_value = names[dim.dim_param]
            out.append(vi2)
        return out

    def _index_tensors(self):
        g = self.model.graph
        self.shapes: dict[str, tuple | None] = {}
        self.dtypes: dict[str, int] = {}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            if vi.type.HasField("tensor_type"):
                self.dtypes[vi.name] = vi.type.tensor_type.elem_type
                self.shapes[vi.name] = _shape_of(vi.type)
        for t in g.initializer:
            self.dtypes[t.name] = t.data_type
            self.shapes[t.name] = tuple(t.dims)
        for name, shape in self.input_shapes.items():
            self.shapes[name] = shape

    def _index_nodes(self):
        nodes = list(self.model.graph.node)
        ids, seen = [], set()
        for i, node in enumerate(nodes):
            base = node.name or f"{node.op_type}_{i}"
            node_id, k = base, 1
            while node_id in seen:
                node_id, k = f"{base}__{k}", k + 1
            seen.add(node_id)
            ids.append(node_id)
        self.producer: dict[str, str] = {}
        self.consumers: dict[str, list[tuple[str, int]]] = {}
        self.node_by_id: dict[str, onnx.NodeProto] = {}
        self.nx = nx.DiGraph()
        self._implicit: dict[str, list[str]] = {}
        for node_id, node in zip(ids, nodes):
            self.node_by_id[node_id] = node
            self.nx.add_node(node_id, op_type=node.op_type, domain=node.domain)
            for out in node.output:
                if out:
                    self.producer[out] = node_id
            implicit = _implicit_inputs(node) if any(
                a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                for a in node.attribute
            ) else []
            self._implicit[node_id] = implicit
            for idx, name in enumerate(list(node.input) + implicit):
                if name:
                    self.consumers.setdefault(name, []).append((node_id, idx))
        for node_id, node in self.node_by_id.items():
            for name in list(node.input) + self._implicit[node_id]:
                src = self.producer.get(name)
                if src is not None and src != node_id:
                    if self.nx.has_edge(src, node_id):
                        self.nx.edges[src, node_id]["tensors"].append(name)
                    else:
                        self.nx.add_edge(src, node_id, tensors=[name])
        order = {node_id: i for i, node_id in enumerate(ids)}
        try:
            self.order = list(nx.lexicographical_topological_sort(self.nx, key=order.get))
        except nx.NetworkXUnfeasible:
            raise ModelLoadError(f"{self.name}: the graph has a cycle") from None

    def _classify_tensors(self):
        """Constants: initializers, Constant outputs, Shape/Size of static tensors, and outputs
        of deterministic nodes whose inputs are all constant."""
        self.constants: set[str] = set(self.initializers)
        for node_id in self.order:
            node = self.node_by_id[node_id]
            inputs = [n for n in list(node.input) + self._implicit[node_id] if n]
            if node.op_type in RANDOM_OPS and node.domain in ("", "ai.onnx"):
                constant = False
            elif node.op_type in ("Shape", "Size") and node.domain in ("", "ai.onnx"):
                constant = _static(self.shapes.get(node.input[0]))
            else:
                constant = all(n in self.constants for n in inputs)
            if constant:
                self.constants.update(o for o in node.output if o)

    def _refine_shapes(self, rounds: int = 8):
        """Where shape inference left tensors without a static shape (onnx's data propagation
        stops at ops such as Mod or Slice of computed bounds), fold the integer constants that
        feed non-constant nodes (Reshape/Expand/Slice shape inputs, ...), give them to shape
        inference as initializers of a scratch copy, and reclassify: a Shape of a tensor whose
        shape became static is constant, and so is everything computed from it. Repeats until
        nothing changes. ``self.model`` keeps its nodes; only its value_info grows."""
        injected: dict[str, np.ndarray] = {}
        for _ in range(rounds):
            if all(_static(self.shapes.get(t)) for t in self.producer if t not in self.constants):
                break
            new = {}
            for tensor in self.constants - set(self.initializers) - set(injected):
                if self.dtypes.get(tensor) not in _INT_TYPES or tensor not in self.producer:
                    continue
                if all(self.is_constant(o) for c, _ in self.consumers.get(tensor, [])
                       for o in self.node_by_id[c].output if o):
                    continue  # only constants that meet a non-constant node matter
                try:
                    value = self.value(tensor)
                except Exception as exc:  # noqa: BLE001 - a constant that cannot be folded stays unknown
                    log.debug("could not fold %s: %s", tensor, exc)
                    continue
                if value is not None and np.size(value) <= _FOLD_CAP:
                    new[tensor] = np.asarray(value)
            if not new:
                break
            injected.update(new)
            work = onnx.ModelProto()
            work.CopyFrom(self.model)
            declared = list(work.graph.value_info)
            del work.graph.value_info[:]
            produced = {n: i for i, node in enumerate(work.graph.node) for n in node.output}
            for name, value in injected.items():
                work.graph.initializer.append(numpy_helper.from_array(value, name))
                node = work.graph.node[produced[name]]
                node.output[list(node.output).index(name)] = f"{name}__onnxinit_folded"
            try:
                inferred = onnx.shape_inference.infer_shapes(work, data_prop=True)
            except Exception as exc:  # noqa: BLE001 - best-effort, as in _infer_shapes
                log.debug("shape inference with folded constants failed: %s", exc)
                break
            infos = [vi for vi in inferred.graph.value_info if vi.name not in injected
                     and not vi.name.endswith("__onnxinit_folded")]
            for name, value in injected.items():
                infos.append(helper_value_info(name, value))
            _keep_declared(self.model.graph, declared, replace=infos)
            self._index_tensors()
            self._classify_tensors()
        for name, value in self._values.items():  # folded constants know their shapes
            if not _static(self.shapes.get(name)):
                self.shapes[name] = tuple(np.shape(value))

    def _fill_missing_shapes(self):
        missing = [
            t for t in self.producer
            if self.is_signal(t) and not _static(self.shapes.get(t))
        ]
        if missing:
            from .measure import run_for_shapes

            measured = run_for_shapes(self, missing)
            self.shapes.update(measured)
            if len(measured) < len(missing):
                self.warnings.append(
                    f"{len(missing) - len(measured)} tensor shapes could not be determined"
                )

    # classification ---------------------------------------------------------------------------

    def is_float(self, tensor: str) -> bool:
        return self.dtypes.get(tensor, TensorProto.FLOAT) in FLOAT_TYPES

    def is_constant(self, tensor: str) -> bool:
        return tensor in self.constants

    def is_signal(self, tensor: str) -> bool:
        """A float tensor whose value depends on the graph inputs (an activation)."""
        return bool(tensor) and tensor not in self.constants and self.is_float(tensor)

    def is_shape_node(self, node_id: str) -> bool:
        """True for nodes of the shape-computation subgraphs (no signal output)."""
        return not any(self.is_signal(o) for o in self.node_by_id[node_id].output)

    def shape(self, tensor: str) -> tuple[int, ...] | None:
        shape = self.shapes.get(tensor)
        return tuple(shape) if _static(shape) else None

    # constants --------------------------------------------------------------------------------

    def value(self, tensor: str) -> np.ndarray | None:
        """The value of a constant tensor (folded on first use), or None for a signal."""
        if tensor not in self.constants:
            return None
        if tensor in self._values:
            return self._values[tensor]
        if tensor in self.initializers:
            value = numpy_helper.to_array(self.initializers[tensor])
        else:
            value = self._fold(self.producer[tensor], tensor)
        self._values[tensor] = value
        return value

    def set_value(self, tensor: str, value: np.ndarray) -> None:
        """Override a parameter's value for later analysis (methods choosing weights one layer
        at a time); constants folded from it are recomputed on next use."""
        if tensor not in self.initializers:
            raise InvalidOptionError(f"{tensor!r} is not an initializer of {self.name}")
        self._values[tensor] = np.asarray(value)
        stale = [tensor]
        while stale:
            for node_id, _ in self.consumers.get(stale.pop(), []):
                for out in self.node_by_id[node_id].output:
                    if out in self._values and out not in self.initializers:
                        del self._values[out]
                        stale.append(out)

    def reset_values(self) -> None:
        """Drop every value override made with :meth:`set_value`."""
        self._values.clear()

    def _fold(self, node_id: str, tensor: str) -> np.ndarray:
        node = self.node_by_id[node_id]
        if node.op_type == "Shape":
            shape = np.array(self.shapes[node.input[0]], dtype=np.int64)
            start = next((a.i for a in node.attribute if a.name == "start"), 0)
            end = next((a.i for a in node.attribute if a.name == "end"), None)
            value = shape[start:end]
        elif node.op_type == "Size":
            value = np.array(int(np.prod(self.shapes[node.input[0]])), dtype=np.int64)
        else:
            from onnx.reference import ReferenceEvaluator

            feeds = {n: self.value(n) for n in node.input if n}
            single = self._single_node_model(node)
            try:
                outs = ReferenceEvaluator(single).run(None, feeds)
            except Exception as exc:  # noqa: BLE001 - the reference evaluator has gaps (e.g.
                # GatherElements over more than 64 entries): onnxruntime folds it instead
                from .runtime import make_session

                log.debug("reference evaluator failed on %s (%s); using onnxruntime", node_id, exc)
                outs = make_session(single, device="cpu", optimize=False).run(None, feeds)
            for name, out in zip([o for o in node.output if o], outs):
                self._values[name] = np.asarray(out)
            return self._values[tensor]
        self._values[tensor] = value
        return value

    def _single_node_model(self, node: onnx.NodeProto) -> onnx.ModelProto:
        inputs = [
            onnx.helper.make_tensor_value_info(n, self.dtypes.get(n, TensorProto.FLOAT), None)
            for n in node.input if n
        ]
        outputs = [onnx.helper.make_tensor_value_info(n, self.dtypes.get(n, 0), None)
                   for n in node.output if n]
        graph = onnx.helper.make_graph([node], "fold", inputs, outputs)
        model = onnx.helper.make_model(
            graph, opset_imports=list(self.model.opset_import), ir_version=self.model.ir_version
        )
        model.functions.extend(self.model.functions)
        return model

    # parameters -------------------------------------------------------------------------------

    @cached_property
    def parameters(self) -> dict[str, Parameter]:
        """Float initializers that reach a node mixing them with signals, with their roles."""
        params: dict[str, Parameter] = {}
        for name, tensor in self.initializers.items():
            if tensor.data_type not in FLOAT_TYPES:
                continue
            for node_id, index in self._signal_uses(name):
                node = self.node_by_id[node_id]
                role = PARAMETER_ROLES.get(node.op_type, {}).get(index, "other")
                if node.op_type == "Gather" and index != 0:
                    continue
                param = params.setdefault(name, Parameter(name, tuple(tensor.dims), tensor.data_type))
                param.uses.append((node_id, index, role))
        return params

    def _signal_uses(self, tensor: str, depth: int = 0) -> list[tuple[str, int]]:
        """(node, input index) where ``tensor`` (through layout ops) meets a signal."""
        uses = []
        for node_id, index in self.consumers.get(tensor, []):
            node = self.node_by_id[node_id]
            if all(self.is_constant(o) for o in node.output if o):
                if node.op_type in LAYOUT_OPS and index == 0 and depth < 8:
                    uses.extend(self._signal_uses(node.output[0], depth + 1))
            else:
                uses.append((node_id, index))
        return uses

    def parameter_of(self, tensor: str) -> str | None:
        """The initializer a constant input comes from, through layout ops (Transpose, Cast...)."""
        depth = 0
        while tensor not in self.initializers and depth < 8:
            node_id = self.producer.get(tensor)
            if node_id is None or self.node_by_id[node_id].op_type not in LAYOUT_OPS:
                return None
            tensor = self.node_by_id[node_id].input[0]
            depth += 1
        return tensor if tensor in self.parameters else None

    @cached_property
    def parametric_nodes(self) -> list[str]:
        """Nodes (in topological order) with a weight: Conv, ConvTranspose, Gemm, MatMul."""
        out = []
        for node_id in self.order:
            node = self.node_by_id[node_id]
            if (node.op_type in WEIGHT_OPS and not self.is_shape_node(node_id)
                    and any(self.parameter_of(n) for n in node.input[:2] if n)):
                out.append(node_id)
        return out

    def weight_input(self, node_id: str) -> int | None:
        """Index of the constant weight input of a Conv/Gemm/MatMul node, if it has one."""
        node = self.node_by_id[node_id]
        candidates = {"Conv": [1], "ConvTranspose": [1], "Gemm": [1, 0], "MatMul": [1, 0]}
        for index in candidates.get(node.op_type, []):
            if index < len(node.input) and self.is_constant(node.input[index]) \
                    and self.is_float(node.input[index]):
                return index
        return None

    def fan_in_out(self, node_id: str) -> tuple[int, int]:
        """(fan_in, fan_out) of a parametric node, grouped/depthwise convolutions included.

        Conv W[C_out, C_in/g, k...]: fan_in = C_in/g * prod(k), fan_out = C_out/g * prod(k).
        ConvTranspose W[C_in, C_out/g, k...]: fan_in = C_in/g * prod(k) / prod(strides)
        (each output sees that many taps), fan_out = C_out/g * prod(k).
        Gemm/MatMul: the contracted and the produced feature sizes.
        """
        node = self.node_by_id[node_id]
        index = self.weight_input(node_id)
        if index is None:
            raise InvalidOptionError(f"node {node_id!r} ({node.op_type}) has no constant weight")
        w = self.shape(node.input[index]) or tuple(self.value(node.input[index]).shape)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv":
            groups = attrs.get("group", 1)
            k = int(np.prod(w[2:]))
            return w[1] * k, w[0] // groups * k
        if node.op_type == "ConvTranspose":
            groups = attrs.get("group", 1)
            k = int(np.prod(w[2:]))
            strides = int(np.prod(attrs.get("strides", [1] * (len(w) - 2))))
            return max(1, w[0] // groups * k // strides), w[1] * k
        if node.op_type == "Gemm":
            trans = attrs.get("transB" if index == 1 else "transA", 0)
            rows, cols = w[-2], w[-1]
            k, n = (cols, rows) if trans else (rows, cols)
            return (k, n) if index == 1 else (n, k)
        # MatMul: B[..., K, N] or A[..., M, K]
        return (w[-2], w[-1]) if index == 1 else (w[-1], w[-2])

    # queries ----------------------------------------------------------------------------------

    def node(self, node_id: str) -> onnx.NodeProto:
        return self.node_by_id[node_id]

    def inputs_of(self, node_id: str) -> list[str]:
        return list(self.node_by_id[node_id].input)

    def float_activations(self) -> list[str]:
        """Signal tensors in topological order (graph inputs first)."""
        out = [i for i in self.input_names if self.is_signal(i)]
        for node_id in self.order:
            out.extend(o for o in self.node_by_id[node_id].output if self.is_signal(o))
        return out

    def subgraph_nodes(self) -> list[str]:
        return [n for n in self.order if self._implicit[n] or any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
            for a in self.node_by_id[n].attribute)]

    def copy_source(self) -> onnx.ModelProto:
        return copy.deepcopy(self.source)


def load(
    model: str | os.PathLike | onnx.ModelProto | ModelGraph,
    *,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    batch_size: int = 32,
) -> ModelGraph:
    """Load a model (path or ModelProto) into a :class:`ModelGraph`."""
    if isinstance(model, ModelGraph):
        return model
    if batch_size < 1:
        raise InvalidOptionError(f"--batch-size must be at least 1, not {batch_size}")
    start = time.perf_counter()
    if isinstance(model, onnx.ModelProto):
        graph = ModelGraph(model, input_shapes=input_shapes, batch_size=batch_size)
    else:
        path = Path(model)
        proto, external = read_model(path)
        graph = ModelGraph(proto, path=path, external=external, input_shapes=input_shapes,
                           batch_size=batch_size)
    log.info("loaded %s in %.2f s (shape inference, constant folding): %d nodes, opset %d, "
             "%d parameters, inputs %s", graph.name, time.perf_counter() - start,
             len(graph.order), graph.opset, len(graph.parameters),
             ", ".join(f"{n} {'x'.join(map(str, s))}" for n, s in graph.input_shapes.items()))
    return graph
