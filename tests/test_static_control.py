"""Control flow that constants decide (onnxinit.passes.static_control) and large constants of
unknown shape (ModelGraph._refine_shapes), against onnxruntime.

The graphs are the patterns PyTorch's TorchScript exporter writes for torchvision's MViT:
``torch.tensor_split`` as a Loop filling a sequence read by SequenceAt, ``if x.dim() == 3``
as an If on a constant, and ``x[:, 1:] += s`` as a ScatterND whose indices are Ranges broadcast
to a shape read from their own sum (too large to fold into shape inference).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxinit
from onnxinit.graph import load
from onnxinit.passes import static_control
from onnxinit.passes.static_control import MAX_RUN_STEPS, endless_loop
from onnxinit.passes.folding import fold_constants, folded_with_shapes
from onnxinit.passes.shapes import types_and_shapes, without_large_data
from onnxinit.runtime import make_session

from .models import looping_model, make_model

BATCH = 8


def _i64(name, value):
    return numpy_helper.from_array(np.array(value, dtype=np.int64), name)


def _measured(model, names: list[str], runs: int = 4) -> dict[str, float]:
    """Variance of each output over ``runs`` batches of N(0, 1) inputs (onnxruntime)."""
    session = make_session(model, device="cpu", optimize=False)
    rng = np.random.default_rng(0)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    values = {n: [] for n in names}
    for _ in range(runs):
        out = session.run(names, {"x": rng.standard_normal(shape).astype(np.float32)})
        for n, v in zip(names, out):
            values[n].append(np.asarray(v, np.float64))
    return {n: float(np.concatenate([v.ravel() for v in vs]).var()) for n, vs in values.items()}


def _predicted(model) -> dict[str, float]:
    return {t.name: t.var for t in onnxinit.analyze(model, batch_size=BATCH).tensors}


def _tensor_split(tokens: int = 9, width: int = 16):
    """``head, rest = torch.tensor_split(x * scale, (1,), dim=1)`` as the exporter writes it
    (a Loop of one step slicing ``[b[i], b[i+1])`` into a sequence, the last piece inserted
    after it), then ``head * 2``, ``rest * 3``; ``scale`` gives the first token 0.1 and the
    others 2, so each piece has its own variance."""
    seq = helper.make_tensor_sequence_value_info
    body = helper.make_graph([
        helper.make_node("Gather", ["bounds", "i"], ["start"], axis=0),
        helper.make_node("Add", ["i", "one"], ["i1"]),
        helper.make_node("Gather", ["bounds", "i1"], ["end"], axis=0),
        helper.make_node("Slice", ["scaled", "start", "end", "axis"], ["piece"]),
        helper.make_node("SequenceInsert", ["s_in", "piece"], ["s_out"]),
        helper.make_node("Identity", ["true"], ["c_out"]),
    ], "body", [helper.make_tensor_value_info("i", TensorProto.INT64, [1]),  # as PyTorch
                helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
                seq("s_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         seq("s_out", TensorProto.FLOAT, None)])
    scale = np.full((1, tokens, 1), 2.0, np.float32)
    scale[0, 0, 0] = 0.1
    nodes = [
        helper.make_node("Mul", ["x", "scale"], ["scaled"]),
        helper.make_node("SequenceEmpty", [], ["empty"], dtype=TensorProto.FLOAT),
        helper.make_node("Loop", ["steps", "true", "empty"], ["pieces"], body=body),
        helper.make_node("Shape", ["scaled"], ["shape"]),
        helper.make_node("Gather", ["shape", "axis"], ["length"], axis=0),
        helper.make_node("Slice", ["scaled", "last", "length", "axis"], ["tail"]),
        helper.make_node("SequenceInsert", ["pieces", "tail"], ["all"]),
        helper.make_node("SequenceAt", ["all", "zero"], ["head"]),
        helper.make_node("SequenceAt", ["all", "minus_one"], ["rest"]),
        helper.make_node("Mul", ["head", "two"], ["head2"]),
        helper.make_node("Mul", ["rest", "three"], ["rest3"]),
    ]
    inits = [numpy_helper.from_array(scale, "scale"), _i64("steps", 1),
             numpy_helper.from_array(np.array(True), "true"), _i64("bounds", [0, 1]),
             _i64("one", 1), _i64("axis", [1]), _i64("last", [1]), _i64("zero", 0),
             _i64("minus_one", -1), numpy_helper.from_array(np.float32(2), "two"),
             numpy_helper.from_array(np.float32(3), "three")]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                            [BATCH, tokens, width])],
                      [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                       for n in ("head2", "rest3")], inits, opset=17)


def test_tensor_split_pieces_are_their_slices():
    """Each SequenceAt of the split is the Slice it reads: the first token's piece 0.1^2 x 2^2,
    the rest's 2^2 x 3^2 (on main every piece was a node without a rule: 1.0 passed on)."""
    model = _tensor_split()
    rewritten = static_control(model)
    assert not {"Loop", "SequenceAt", "SequenceInsert"} & {n.op_type for n in rewritten.graph.node}
    measured = _measured(model, ["head2", "rest3"])
    predicted = _predicted(model)
    for name in ("head2", "rest3"):
        assert predicted[name] == pytest.approx(measured[name], rel=0.05), (name, predicted,
                                                                            measured)


def test_rewritten_split_computes_what_the_loop_computes():
    """The rewrite is exact: onnxruntime gives the same outputs before and after it."""
    model = _tensor_split()
    x = np.random.default_rng(1).standard_normal((BATCH, 9, 16)).astype(np.float32)
    before = make_session(model, device="cpu", optimize=False).run(None, {"x": x})
    after = make_session(static_control(model), device="cpu", optimize=False).run(None, {"x": x})
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)


def _shortcut_after_if(tokens: int = 65, width: int = 256):
    """``y = x.squeeze(1) if x.dim() == 4 else x`` (an If on a constant), then ``y[:, 1:] =
    3 * y[:, 1:]`` as a ScatterND whose indices are Ranges over y's shape, broadcast to the shape
    of their sum (BATCH x (tokens - 1) x width = 131,072 elements: too large to fold)."""
    then_g = helper.make_graph([helper.make_node("Squeeze", ["x", "axis1"], ["t_out"])], "then",
                               [], [helper.make_tensor_value_info("t_out", TensorProto.FLOAT,
                                                                  None)])
    else_g = helper.make_graph([helper.make_node("Identity", ["x"], ["e_out"])], "else", [],
                               [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, None)])
    nodes = [
        helper.make_node("Shape", ["x"], ["xs"]),
        helper.make_node("Size", ["xs"], ["rank"]),
        helper.make_node("Equal", ["rank", "four"], ["is4"]),
        helper.make_node("If", ["is4"], ["y"], then_branch=then_g, else_branch=else_g),
        helper.make_node("Shape", ["y"], ["ys"]),
    ]
    ranges = []
    for k, (start, reshape) in enumerate(((0, [-1, 1, 1]), (1, [-1, 1]), (0, [-1]))):
        nodes += [helper.make_node("Gather", ["ys", f"a{k}"], [f"n{k}"], axis=0),
                  helper.make_node("Range", [f"s{k}", f"n{k}", "one"], [f"r{k}"]),
                  helper.make_node("Reshape", [f"r{k}", f"shape{k}"], [f"b{k}"])]
        ranges.append(f"b{k}")
    nodes += [
        helper.make_node("Add", ["b0", "b1"], ["sum01"]),
        helper.make_node("Add", ["sum01", "b2"], ["sum"]),
        helper.make_node("Shape", ["sum"], ["target"]),
        *[helper.make_node("Expand", [b, "target"], [f"e{k}"]) for k, b in enumerate(ranges)],
        *[helper.make_node("Unsqueeze", [f"e{k}", "last"], [f"u{k}"]) for k in range(3)],
        helper.make_node("Concat", ["u0", "u1", "u2"], ["indices"], axis=-1),
        helper.make_node("Slice", ["y", "last_start", "big", "axis1"], ["tail"]),
        helper.make_node("Mul", ["tail", "three"], ["updates"]),
        helper.make_node("ScatterND", ["y", "indices", "updates"], ["z"]),
    ]
    inits = [_i64("axis1", [1]), _i64("four", 4), _i64("one", 1), _i64("last", [-1]),
             _i64("last_start", [1]), _i64("big", [1 << 30]),
             numpy_helper.from_array(np.float32(3), "three")]
    for k, (start, reshape) in enumerate(((0, [-1, 1, 1]), (1, [-1, 1]), (0, [-1]))):
        inits += [_i64(f"a{k}", k), _i64(f"s{k}", start), _i64(f"shape{k}", reshape)]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                            [BATCH, 1, tokens, width])],
                      [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], inits,
                      opset=17)


def test_scatter_indices_from_a_large_constant_after_a_constant_if():
    """The ScatterND writes 3x the tokens after the first: Var z = (1 + 64 x 9) / 65 of y's
    (8.88). On main its indices were not constant (the Shape of their sum was not: the sum
    is too large to fold and shape inference stopped at the If), so z passed y's 1.0 on."""
    model = _shortcut_after_if()
    graph = load(model, batch_size=BATCH)
    assert graph.shape("sum") == (BATCH, 64, 256)
    assert "indices" in graph.constants
    measured = _measured(model, ["z"])
    predicted = _predicted(model)
    assert predicted["z"] == pytest.approx(measured["z"], rel=0.05), (predicted["z"], measured)


def test_shapes_of_a_round_are_folding_s_last_inference(monkeypatch):
    """A round's shapes are those of a fresh inference on the folded copy (the oracle), and
    cost no inference beyond folding's own: static_control on a model with one constant If
    runs onnx's shape inference as often as folding its light copy alone does (main ran it
    once more, on the folded copy folding had just inferred)."""
    model = _shortcut_after_if()
    folded, shapes = folded_with_shapes(without_large_data(model), set())
    assert shapes == types_and_shapes(folded)[1]
    assert shapes["xs"] == (4,)  # the Shape the If's condition reads
    calls = []
    infer = onnx.shape_inference.infer_shapes
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes",
                        lambda *a, **k: calls.append(1) or infer(*a, **k))
    fold_constants(without_large_data(model), set())
    folding = len(calls)
    calls.clear()
    rewritten = static_control(model)
    assert "If" not in {n.op_type for n in rewritten.graph.node}
    assert len(calls) == folding


def test_a_loop_that_stops_early_or_is_short_is_analysed():
    """Only a Loop that cannot stop before MAX_RUN_STEPS is refused: 3 steps are analysed
    (the fallback runs it), as is a long Loop whose condition is computed in its body."""
    assert endless_loop(looping_model(3)) is None
    assert endless_loop(looping_model(MAX_RUN_STEPS)) is None
    assert "runs 1048577 steps" in endless_loop(looping_model(MAX_RUN_STEPS + 1))
    model = looping_model()
    body = model.graph.node[1].attribute[0].g
    body.node[0].op_type = "Not"  # the condition turns false after the first step
    assert endless_loop(model) is None
    result = onnxinit.analyze(looping_model(3))
    assert result.tensors[-1].name == "y"
