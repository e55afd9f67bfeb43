"""Exact higher-order derivatives by differentiating a gradient graph again (reverse over
reverse): append a scalar function ``phi`` of the graph's tensors (the loss, the gradients,
extra inputs) and build the gradient graph of ``phi`` with respect to the same parameters.

- ``phi = sum_i <g_i, v_i>`` (v an extra input) gives the Hessian-vector product
  ``d phi / d theta = H v`` (:class:`HessianVectorProgram`);
- ``phi = ||g||_2`` gives ``H g / ||g||_2`` in the same run as the loss and g;
- a derived graph can be derived again: ``phi_2(g, H g)`` through third derivatives.

A :class:`DerivedGraph` names its tensors by role: ``"loss"``, ``"grad:<param>"`` (the first
gradients), ``"phi"`` and ``"dphi:<param>"`` of a derivation (or the role name it was given),
and the extra inputs by the names given. A run returns every tensor asked for by role. Building fails with
:class:`~onnxinit.errors.OnnxInitError` where an op of the gradient graph has no backward rule.

    program = GradientProgram(model, {"x": x.shape})
    hvp = HessianVectorProgram(program)
    products = hvp(params, v, {"x": x}, labels)          # parameter -> (H v) block
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from ..passes.emitter import GraphEmitter
from .execution import Runner
from .loss import ScalarOutput
from .program import GradientProgram
from .reverse import GradientGraph, build_gradient_graph

# builds phi from (emitter, role -> tensor name, element type); returns phi's tensor name
Builder = Callable[[GraphEmitter, Mapping[str, str], int], str]


@dataclass(frozen=True)
class DerivedGraph:
    """A graph computing phi and d phi / d wrt, with its tensors named by role."""

    model: onnx.ModelProto
    wrt: tuple[str, ...]
    tensors: dict[str, str]  # role -> tensor name, for every role it can output
    inputs: tuple[str, ...]  # runtime inputs (model inputs, labels, parameters, extras)
    elem_type: int


def _roles_of(graph: GradientGraph | DerivedGraph) -> dict[str, str]:
    if isinstance(graph, DerivedGraph):
        return dict(graph.tensors)
    outputs = graph.model.graph.output
    return {"loss": graph.loss,
            **{f"grad:{name}": outputs[k + 1].name for k, name in enumerate(graph.wrt)}}


def derive(
    graph: GradientGraph | DerivedGraph,
    build: Builder,
    *,
    extra_inputs: Mapping[str, Sequence[int]] | None = None,
    role: str = "phi",
) -> DerivedGraph:
    """``graph`` extended with ``phi = build(...)`` and differentiated w.r.t. its parameters.
    ``extra_inputs``: role -> shape of new float inputs that ``build`` may use (for example the
    direction of a Hessian-vector product). The new tensors take the roles ``role`` (phi) and
    ``d<role>:<param>``; deriving a derived graph again keeps its roles under their names."""
    model, wrt, elem = graph.model, tuple(graph.wrt), graph.elem_type
    roles = _roles_of(graph)
    nodes, inputs = list(model.graph.node), list(model.graph.input)
    taken = {n for node in nodes for n in [*node.input, *node.output]}
    taken |= {v.name for v in inputs} | {t.name for t in model.graph.initializer}
    emitter = GraphEmitter(taken, "derive/")
    for extra, shape in (extra_inputs or {}).items():
        name = emitter.reserve(extra.replace(":", "/"))
        roles[extra] = name
        inputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
    phi = build(emitter, roles, elem)
    extended = helper.make_model(
        helper.make_graph(nodes + emitter.nodes, "derived", inputs,
                          [helper.make_tensor_value_info(phi, elem, [])],
                          [*model.graph.initializer, *emitter.initializers]),
        opset_imports=model.opset_import, ir_version=model.ir_version)
    initializers = {t.name for t in model.graph.initializer}
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in inputs if v.name not in initializers}
    derived = build_gradient_graph(
        extended, shapes, loss=ScalarOutput(phi), wrt=list(wrt),
        dtype="float64" if elem == onnx.TensorProto.DOUBLE else "float32")
    outputs = derived.model.graph.output
    roles[role] = outputs[0].name
    roles.update({f"d{role}:{name}": outputs[k + 1].name for k, name in enumerate(wrt)})
    runtime = tuple(v.name for v in derived.model.graph.input)
    return DerivedGraph(derived.model, wrt, roles, runtime, elem)


class DerivedProgram:
    """A :class:`DerivedGraph` with its session: ``run(feeds, roles)`` returns the tensors of
    the given roles (feeds: the runtime inputs by tensor name). ``backend``: see
    :class:`~onnxinit.autodiff.execution.Runner`."""

    def __init__(self, graph: DerivedGraph, *, device: str = "auto", float64: bool = False,
                 threads: int | None = None, backend: str | None = None):
        self.graph = graph
        self.inputs = frozenset(graph.inputs)
        self._runners: dict[tuple[str, ...], Runner] = {}
        self._device, self._float64, self._threads = device, float64, threads
        self._backend = backend

    def _runner(self, roles: tuple[str, ...]) -> Runner:
        if roles not in self._runners:
            model = onnx.ModelProto()
            model.CopyFrom(self.graph.model)
            known = {v.name: v for v in model.graph.output}
            model.graph.ClearField("output")
            for role in roles:
                name = self.graph.tensors[role]
                model.graph.output.append(
                    known.get(name) or helper.make_tensor_value_info(name, self.graph.elem_type,
                                                                     None))
            self._runners[roles] = Runner(model, device=self._device, float64=self._float64,
                                          threads=self._threads, backend=self._backend)
        return self._runners[roles]

    def run(self, feeds: Mapping[str, np.ndarray], roles: Sequence[str]) -> dict[str, np.ndarray]:
        roles = tuple(roles)
        results = self._runner(roles).run({k: v for k, v in feeds.items() if k in self.inputs})
        return dict(zip(roles, results))


def inner_product(emitter: GraphEmitter, roles: Mapping[str, str], wrt: Sequence[str],
                  left: str, right: str) -> str:
    """sum_i <left:i, right:i> over the parameters ``wrt``."""
    terms = [emitter.node("ReduceSum", [emitter.node("Mul", [roles[f"{left}:{name}"],
                                                             roles[f"{right}:{name}"]])],
                          keepdims=0) for name in wrt]
    return emitter.node("Sum", terms) if len(terms) > 1 else terms[0]


class HessianVectorProgram:
    """``H(theta) v`` of a :class:`~onnxinit.autodiff.GradientProgram`'s loss, exactly:
    the gradient of ``phi = <g(theta), v>`` with v a graph input. ``__call__`` returns the
    products per parameter; ``with_gradient`` also the loss and the gradients of the same run."""

    def __init__(self, program: GradientProgram):
        self.program = program
        wrt = program.wrt
        shapes = {f"v:{name}": program.parameters[name].shape for name in wrt}
        self.graph = derive(program.graph,
                            lambda e, roles, elem: inner_product(e, roles, wrt, "grad", "v"),
                            extra_inputs=shapes)
        self._run = DerivedProgram(self.graph, device=program.device, float64=program.float64,
                                   threads=program.threads, backend=program.backend)
        self._dtype = helper.tensor_dtype_to_np_dtype(self.graph.elem_type)

    def _feeds(self, params, v, feeds, labels):
        out = self.program.session_feeds(feeds, labels, params)
        for name in self.program.wrt:
            out[self.graph.tensors[f"v:{name}"]] = np.asarray(v[name], dtype=self._dtype)
        return out

    def __call__(self, params: Mapping[str, np.ndarray] | None, v: Mapping[str, np.ndarray],
                 feeds: Mapping[str, np.ndarray], labels=None) -> dict[str, np.ndarray]:
        wrt = self.program.wrt
        out = self._run.run(self._feeds(params, v, feeds, labels), [f"dphi:{n}" for n in wrt])
        return {name: out[f"dphi:{name}"] for name in wrt}

    def with_gradient(self, params, v, feeds, labels=None):
        """(loss, gradients, products) from one run."""
        wrt = self.program.wrt
        roles = ["loss", *(f"grad:{n}" for n in wrt), *(f"dphi:{n}" for n in wrt)]
        out = self._run.run(self._feeds(params, v, feeds, labels), roles)
        return (float(out["loss"]), {n: out[f"grad:{n}"] for n in wrt},
                {n: out[f"dphi:{n}"] for n in wrt})
