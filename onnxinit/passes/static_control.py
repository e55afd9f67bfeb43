"""Control flow that constants decide, written out as the plain ops it runs.

Exporters leave control flow in graphs whose outcome the input shapes already fix. No rule
reads through it: an ``If`` stops shape inference (everything after it had its shape measured
by running the model), and a sequence of tensors reaches the analysis as an op without a rule.
Two such patterns are rewritten:

- an ``If`` whose condition is a constant (PyTorch writes ``if x.dim() == 3: x = x.squeeze(1)``
  that way: MViT's pooling) becomes its taken branch's nodes, then an Identity per output;
- PyTorch's TorchScript exporter writes ``torch.tensor_split(x, indices, dim)`` (and ``split``
  with sizes it cannot read statically) as a ``Loop`` that appends a ``Slice`` of ``x`` to a
  sequence each step (``SequenceInsert``), one last ``SequenceInsert`` after it, and a
  ``SequenceAt`` per piece read::

      seq = Loop(M, true, SequenceEmpty())
          body(i, c, s): SequenceInsert(s, Slice(x, b[i], b[i+1]))
      piece_k = SequenceAt(SequenceInsert(seq, Slice(x, b[M], end)), k)

  The Loop is unrolled and the sequence resolved, so that each piece is the ``Slice`` it is::

      Loop(M, c0, s0) with body f   ->   s_1 = f(0, true, s_0), ..., s_M = f(M-1, true, s_{M-1})
      SequenceEmpty() -> [],  SequenceConstruct(t_1..t_n) -> [t_1..t_n],
      SequenceInsert(S, t[, p]) -> S with t inserted at p (appended without p),
      SequenceAt(S, k) -> Identity(S[k])   (k < 0: S[len(S) + k])

A Loop is unrolled only when nothing about it is left to run time: its trip count is a
constant M (at most ``MAX_STEPS``; shapes are static once the input shapes are set), its
condition is true on entry and every step (the body's is its input passed on, or a constant
true), every value it carries is a sequence and it has no scan outputs. The body's step
number becomes a constant per step, so the bounds each step reads fold. A subgraph written out
(a branch, a body) holds no subgraph of its own. Sequence nodes whose result nothing reads any
more are removed. Any other model is returned unchanged (the same object).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..initializers import tensor_array
from .base import model_pass
from .folding import (MAX_FOLDED_ELEMENTS, NEVER_FOLDED, evaluate_node, folded_with_shapes,
                      shape_op_value)
from .shapes import without_large_data

MAX_STEPS = 64  # steps of one Loop unrolled, at most
MAX_NODES = 4096  # body nodes written out over all of a Loop's steps, at most
_SEQUENCE_BUILDERS = frozenset({"SequenceEmpty", "SequenceConstruct", "SequenceInsert"})


class _Constants:
    """Values of the main graph's tensors computable from constants and static shapes (the
    shapes inferred once, on first need)."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.producer: dict[str, onnx.NodeProto] = {}
        self.initializers = {i.name: i for i in model.graph.initializer}
        self.values: dict[str, np.ndarray] = {}
        # computed from a graph input or a random op: never a constant (a Shape or Size of one
        # may be, once its shape is static); the walks for values stop there
        self.signals = {i.name for i in model.graph.input} - self.initializers.keys()
        self._shapes: dict | None = None
        self.register(model.graph.node)

    def register(self, nodes) -> None:
        """Index ``nodes`` (in topological order, after those registered before)."""
        for node in nodes:
            outputs = [o for o in node.output if o]
            self.producer.update((o, node) for o in outputs)
            if node.op_type in ("Shape", "Size") and node.domain in ("", "ai.onnx"):
                continue
            if (node.domain not in ("", "ai.onnx") or node.op_type in NEVER_FOLDED
                    or any(i in self.signals for i in node.input)):
                self.signals.update(outputs)

    def shapes(self) -> dict:
        """Shapes by inference on a light copy with its constants folded (inference alone
        stops at a Slice whose bounds are computed, even from constants): those of folding's
        last round of inference, on the folded copy as it returns it."""
        if self._shapes is None:
            self._shapes = folded_with_shapes(without_large_data(self.model), set())[1]
        return self._shapes

    def value(self, name: str) -> np.ndarray | None:
        if name in self.values:
            return self.values[name]
        if name in self.signals:
            return None
        if name in self.initializers:
            self.values[name] = tensor_array(self.initializers[name])
            return self.values[name]
        node = self.producer.get(name)
        if node is None or node.domain not in ("", "ai.onnx") or node.op_type in NEVER_FOLDED:
            return None
        if node.op_type in ("Shape", "Size"):
            out = shape_op_value(node, self.shapes().get(node.input[0]))
            outs = None if out is None else [out]
        else:
            feeds = {}
            for i in node.input:
                if i and (v := self.value(i)) is None:
                    self.signals.add(name)
                    return None
                if i:
                    feeds[i] = v
            try:
                outs = evaluate_node(node, feeds, opset_import=self.model.opset_import,
                                     ir_version=self.model.ir_version,
                                     functions=self.model.functions)
            except Exception:  # noqa: BLE001 - not computable here: the Loop stays
                outs = None
        if outs is None:
            self.signals.add(name)  # not computable: not asked again
            return None
        for out_name, out in zip([o for o in node.output if o], outs):
            self.values[out_name] = np.asarray(out)
        return self.values.get(name)


def _is_true(value: np.ndarray | None) -> bool:
    return value is not None and value.size == 1 and bool(value.reshape(()))


def _always_true(body: onnx.GraphProto, value: Callable[[str], np.ndarray | None]) -> bool:
    """Whether the body's condition output is true every step: its condition input passed on
    (through Identity), a Constant true of the body, or an outer constant true."""
    produced = {o: n for n in body.node for o in n.output if o}
    name = body.output[0].name
    while True:
        if name == body.input[1].name:
            return True
        node = produced.get(name)
        if node is None:  # from the outer scope
            return _is_true(value(name))
        if node.op_type == "Identity":
            name = node.input[0]
        elif node.op_type == "Constant" and node.attribute[0].name == "value":
            return _is_true(numpy_helper.to_array(node.attribute[0].t))
        else:
            return False


def _loop_body(node: onnx.NodeProto) -> onnx.GraphProto:
    return next(a.g for a in node.attribute if a.name == "body")


def _steps(node: onnx.NodeProto, constants: _Constants) -> int | None:
    """The number of steps of a Loop that may be unrolled (module docstring), else None."""
    if node.op_type != "Loop" or node.domain not in ("", "ai.onnx") or not node.input[0]:
        return None
    body = _loop_body(node)
    carried = len(node.input) - 2
    if len(body.output) != 1 + carried or _nested(body):
        return None
    if not all(i.type.HasField("sequence_type") for i in body.input[2:]):
        return None
    trip = constants.value(node.input[0])
    if trip is None or trip.size != 1 or not 0 <= int(trip.reshape(())) <= MAX_STEPS:
        return None
    steps = int(trip.reshape(()))
    if steps * len(body.node) > MAX_NODES:
        return None
    if node.input[1] and not _is_true(constants.value(node.input[1])):
        return None
    return steps if _always_true(body, constants.value) else None


def _unrolled(node: onnx.NodeProto, steps: int, index: int) -> list[onnx.NodeProto]:
    """The Loop's steps written out, then an Identity per Loop output from the last step."""
    body = _loop_body(node)
    prefix = f"{node.output[0]}.step"
    carried = list(node.input[2:])
    # the step number is a scalar; PyTorch declares it of shape [1] (onnxruntime runs it so)
    declared = body.input[0].type.tensor_type
    rank_one = (1,) if declared.HasField("shape") and len(declared.shape.dim) == 1 else ()
    out: list[onnx.NodeProto] = []
    for step in range(steps):
        names = {body.input[2 + k].name: c for k, c in enumerate(carried)}
        counter = f"{prefix}{step}:{body.input[0].name}"
        condition = f"{prefix}{step}:{body.input[1].name}"
        names[body.input[0].name] = counter
        names[body.input[1].name] = condition
        out.append(helper.make_node("Constant", [], [counter], name=f"{counter}/value",
                                    value=numpy_helper.from_array(np.full(rank_one, step,
                                                                          np.int64))))
        out.append(helper.make_node("Constant", [], [condition], name=f"{condition}/value",
                                    value=numpy_helper.from_array(np.array(True))))
        for k, inner in enumerate(body.node):
            copy = onnx.NodeProto()
            copy.CopyFrom(inner)
            for o, name in enumerate(inner.output):
                if name:
                    names[name] = f"{prefix}{step}:{name}"
                    copy.output[o] = names[name]
            for i, name in enumerate(inner.input):
                copy.input[i] = names.get(name, name)
            copy.name = f"{prefix}{step}:{inner.name or k}"
            out.append(copy)
        carried = [names.get(o.name, o.name) for o in body.output[1:]]
    for k, (result, source) in enumerate(zip(node.output, carried)):
        if result:
            out.append(helper.make_node("Identity", [source], [result],
                                        name=f"{node.name or index}/unrolled{k}"))
    return out


def _branch(node: onnx.NodeProto, constants: _Constants) -> onnx.GraphProto | None:
    """The branch an ``If`` takes when its condition is a constant, else None."""
    if node.op_type != "If" or node.domain not in ("", "ai.onnx"):
        return None
    condition = constants.value(node.input[0])
    if condition is None or condition.size != 1:
        return None
    name = "then_branch" if bool(condition.reshape(())) else "else_branch"
    branch = next(a.g for a in node.attribute if a.name == name)
    return None if _nested(branch) else branch


def _nested(graph: onnx.GraphProto) -> bool:
    return any(a.HasField("g") or a.graphs for n in graph.node for a in n.attribute)


def _inlined(node: onnx.NodeProto, branch: onnx.GraphProto, index: int
             ) -> list[onnx.NodeProto]:
    """The branch's nodes (their tensors renamed apart), then an Identity per If output."""
    prefix = f"{node.output[0]}.taken:"
    names: dict[str, str] = {}
    out = []
    for k, inner in enumerate(branch.node):
        copy = onnx.NodeProto()
        copy.CopyFrom(inner)
        for i, name in enumerate(inner.input):
            copy.input[i] = names.get(name, name)
        for o, name in enumerate(inner.output):
            if name:
                names[name] = copy.output[o] = f"{prefix}{name}"
        copy.name = f"{prefix}{inner.name or k}"
        out.append(copy)
    for k, (result, source) in enumerate(zip(node.output, branch.output)):
        if result:
            out.append(helper.make_node("Identity", [names.get(source.name, source.name)],
                                        [result], name=f"{node.name or index}/taken{k}"))
    return out


def _resolved(nodes: list[onnx.NodeProto], constants: _Constants) -> list[onnx.NodeProto]:
    """Each SequenceAt of a sequence known piece by piece, at a constant position, written as
    the Identity of its piece (the module docstring's rules)."""
    known: dict[str, list[str]] = {}
    out = []
    for node in nodes:
        op, ins = node.op_type, list(node.input)
        if op == "SequenceEmpty":
            known[node.output[0]] = []
        elif op == "SequenceConstruct":
            known[node.output[0]] = ins
        elif op == "Identity" and ins[0] in known:
            known[node.output[0]] = known[ins[0]]
        elif op == "SequenceInsert" and ins[0] in known:
            pieces = list(known[ins[0]])
            position = constants.value(ins[2]) if len(ins) > 2 and ins[2] else None
            if len(ins) > 2 and ins[2] and position is None:
                out.append(node)
                continue
            at = len(pieces) if position is None else int(position.reshape(()))
            pieces.insert(at + len(pieces) if at < 0 else at, ins[1])
            known[node.output[0]] = pieces
        elif op == "SequenceAt" and ins[0] in known:
            position = constants.value(ins[1])
            pieces = known[ins[0]]
            if position is not None and -len(pieces) <= int(position.reshape(())) < len(pieces):
                node = helper.make_node("Identity", [pieces[int(position.reshape(()))]],
                                        [node.output[0]], name=node.name)
        out.append(node)
    return out


def _without_unread_sequences(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]
                              ) -> list[onnx.NodeProto]:
    """``nodes`` less the sequence builders (and Identities of their results) nothing reads."""
    sequences: set[str] = set()
    for node in nodes:
        if node.op_type in _SEQUENCE_BUILDERS or (node.op_type == "Identity"
                                                  and node.input[0] in sequences):
            sequences.update(node.output)
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(nodes):
        if set(node.output) <= sequences and not needed.intersection(node.output):
            continue
        needed.update(node.input)
        for attribute in node.attribute:  # what a subgraph reads from this scope
            for sub in [attribute.g] if attribute.HasField("g") else attribute.graphs:
                needed.update(i for n in sub.node for i in n.input)
        kept.append(node)
    return kept[::-1]


def _folded(nodes: list[onnx.NodeProto], constants: _Constants) -> list[onnx.NodeProto]:
    """``nodes`` with each one computable from constants (a step's bounds, ``b[i]``) written
    as a Constant of its value, so that shape inference reads the Slices they bound."""
    out = []
    for node in nodes:
        names = [o for o in node.output if o]
        values = [None] if node.op_type == "Constant" else [constants.value(o) for o in names]
        if any(v is None or v.size > MAX_FOLDED_ELEMENTS for v in values):
            out.append(node)
            continue
        out.extend(helper.make_node("Constant", [], [name], name=f"{node.name}/folded{k}",
                                    value=numpy_helper.from_array(np.asarray(value), name))
                   for k, (name, value) in enumerate(zip(names, values)))
    return out


def _rewritten(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """One round: what the constants of ``model`` (and its inferred shapes) decide, rewritten;
    None when they decide nothing."""
    constants = _Constants(model)
    nodes: list[onnx.NodeProto] = []
    changed = False
    for index, node in enumerate(model.graph.node):
        branch = _branch(node, constants)
        steps = None if branch is not None else _steps(node, constants)
        if branch is not None:
            written = _inlined(node, branch, index)
        elif steps is not None:
            written = _unrolled(node, steps, index)
        else:
            nodes.append(node)
            continue
        constants.register(written)
        nodes.extend(_folded(written, constants))
        changed = True
    if not changed:
        return None
    nodes = _without_unread_sequences(model.graph, _resolved(nodes, constants))
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


MAX_RUN_STEPS = 1 << 20  # steps of a Loop that never stops early, at most, for a model to run


def endless_loop(model: onnx.ModelProto) -> str | None:
    """Why ``model`` cannot be run to the end, or None: a Loop of its main graph whose
    condition is true at every step (:func:`_always_true`, its initial condition absent or a
    constant true) and whose trip count is absent (it never stops) or a constant above
    :data:`MAX_RUN_STEPS`. The analysis runs models in onnxruntime (missing shapes, the
    fallback, ``--measure``), which would not return: native code, no signal stops it."""
    loops = [n for n in model.graph.node if n.op_type == "Loop"
             and n.domain in ("", "ai.onnx") and len(n.input) >= 2]
    if not loops:
        return None
    constants = _Constants(model)
    for node in loops:
        body = _loop_body(node)
        if len(body.input) < 2 or not body.output:
            continue
        if node.input[1] and not _is_true(constants.value(node.input[1])):
            continue
        trip = constants.value(node.input[0]) if node.input[0] else None
        if node.input[0] and (trip is None or trip.size != 1
                              or int(trip.reshape(())) <= MAX_RUN_STEPS):
            continue
        if not _always_true(body, constants.value):
            continue
        steps = (f"{int(trip.reshape(()))} steps" if trip is not None
                 else "without end (no trip count)")
        return (f"node {node.name or node.output[0]!r} (Loop) runs {steps}: its condition "
                f"stays true; onnxruntime would not finish running the model (at most "
                f"{MAX_RUN_STEPS} steps)")
    return None


@model_pass(in_place=False)
def static_control(model: onnx.ModelProto, rounds: int = 4) -> onnx.ModelProto:
    """``model`` with its constant-condition Ifs inlined and its sequence-building Loops
    unrolled, their pieces read directly (module docstring); ``model`` itself when there is
    nothing to rewrite. Round after round (at most ``rounds``): shapes inferred past one
    rewrite can decide the next (an If on the rank of a tensor computed from a split)."""
    for _ in range(rounds):
        if not any(n.op_type in ("If", "Loop") for n in model.graph.node):
            break
        rewritten = _rewritten(model)
        if rewritten is None:
            break
        model = rewritten
    return model


__all__ = ["MAX_RUN_STEPS", "MAX_STEPS", "endless_loop", "static_control"]
