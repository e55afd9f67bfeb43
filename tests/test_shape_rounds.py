"""ModelGraph._refine_shapes: shapes computed in the graph that onnx's data propagation does
not follow (Mod), one round of folding and inference per stage, against onnxruntime and
onnx's own inference where that knows the shape; each
round's search for foldable constants looks only at the constants new since the last and finds
what a search of all of them finds."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxinit.graph import ModelGraph, load
from onnxinit.passes import FoldedInference, is_static, shape_of

from .models import make_model


def _i64(name, value):
    return numpy_helper.from_array(np.array(value, dtype=np.int64), name)


def _padded_stages(windows=(3, 4, 5)):
    """Stage i pads the height of x up to a multiple of windows[i] (torchvision's Swin pads its
    windows so: the pad is (w - h % w) % w), then adds a bias of shape [1, 1, H', 1] built from
    the padded height (Range over Shape), so every stage's shapes wait for the one before."""
    nodes, inits = [], [_i64("two", 2), _i64("axes", [0]), _i64("zero", 0), _i64("one", 1),
                        _i64("zeros5", [0, 0, 0, 0, 0]), _i64("zeros2", [0, 0])]
    x = "x"
    for i, w in enumerate(windows):
        inits.append(_i64(f"w{i}", w))
        nodes += [
            helper.make_node("Shape", [x], [f"s{i}"]),
            helper.make_node("Gather", [f"s{i}", "two"], [f"h{i}"], axis=0),
            helper.make_node("Mod", [f"h{i}", f"w{i}"], [f"r{i}"]),
            helper.make_node("Sub", [f"w{i}", f"r{i}"], [f"q{i}"]),
            helper.make_node("Mod", [f"q{i}", f"w{i}"], [f"p{i}"]),
            helper.make_node("Unsqueeze", [f"p{i}", "axes"], [f"pu{i}"]),
            helper.make_node("Concat", ["zeros5", f"pu{i}", "zeros2"], [f"pads{i}"], axis=0),
            helper.make_node("Pad", [x, f"pads{i}"], [f"x{i}"]),
            helper.make_node("Shape", [f"x{i}"], [f"t{i}"]),
            helper.make_node("Gather", [f"t{i}", "two"], [f"hp{i}"], axis=0),
            helper.make_node("Range", ["zero", f"hp{i}", "one"], [f"rng{i}"]),
            helper.make_node("Cast", [f"rng{i}"], [f"rf{i}"], to=TensorProto.FLOAT),
            helper.make_node("Reshape", [f"rf{i}", f"bshape{i}"], [f"bias{i}"]),
            helper.make_node("Add", [f"x{i}", f"bias{i}"], [f"y{i}"]),
            helper.make_node("Relu", [f"y{i}"], [f"z{i}"]),
        ]
        inits.append(_i64(f"bshape{i}", [1, 1, -1, 1]))
        x = f"z{i}"
    nodes.append(helper.make_node("Identity", [x], ["out"]))
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, "h", 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        inits,
    )


def _runtime_values(model: onnx.ModelProto, feeds) -> dict[str, np.ndarray]:
    """Every node output, computed by onnxruntime (each made a graph output)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = [o for node in probe.graph.node for o in node.output if o and o != "out"]
    elem = {n: TensorProto.INT64 for n in names}
    elem.update({n: TensorProto.FLOAT for n in names
                 if n[0] in "xyzb" or n.startswith("rf")})
    probe.graph.output.extend(helper.make_tensor_value_info(n, elem[n], None) for n in names)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = session.run(None, feeds)
    return {o.name: v for o, v in zip(session.get_outputs(), outs)}


def test_staged_shapes_match_onnxruntime(monkeypatch):
    rounds = []
    original = FoldedInference.infos

    def counted(self, constants, *args):
        rounds.append(len(constants))
        return original(self, constants, *args)

    monkeypatch.setattr(FoldedInference, "infos", counted)
    def measured(*args, **kwargs):
        raise AssertionError("the model was run to measure a shape")

    monkeypatch.setattr("onnxinit.graph.measured_shapes", measured)
    model = _padded_stages()
    graph = load(model, input_shapes={"x": (2, 2, 7, 3)})
    assert len(rounds) >= 3  # one round per stage: the test exercises the rounds
    measured = _runtime_values(model, {"x": np.ones((2, 2, 7, 3), np.float32)})
    for name, value in measured.items():
        if graph.is_constant(name):  # a constant's shape may stay unknown until it is folded
            assert graph.shape(name) in (None, value.shape), name
            np.testing.assert_array_equal(graph.value(name), value, err_msg=name)
        else:
            assert graph.shape(name) == value.shape, name
    assert not graph.missing_shapes()
    # what onnx's own inference (data propagation, no folding) knows, the graph knows alike
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    dims = fixed.graph.input[0].type.tensor_type.shape.dim
    for dim, size in zip(dims, (2, 2, 7, 3)):
        dim.dim_value = size
    inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True).graph.value_info
    static = {vi.name: shape_of(vi.type) for vi in inferred if is_static(shape_of(vi.type))}
    assert "s0" in static and "x0" not in static  # onnx alone stops at Mod: the rounds go on
    for name, shape in static.items():
        assert graph.shape(name) in (None, shape) if graph.is_constant(name) else \
            graph.shape(name) == shape, name


def test_each_round_looks_only_at_new_constants_and_finds_what_a_full_search_finds(monkeypatch):
    original = ModelGraph._foldable_constants
    injected: dict[str, np.ndarray] = {}
    looked: list[int] = []

    def checked(self, examined):
        before = set(examined)
        new = original(self, examined)
        looked.append(len(examined - before))
        # the search before this change: every constant not an initializer nor folded yet
        full = original(self, set(injected))
        assert list(new) == list(full)
        for name in new:
            np.testing.assert_array_equal(new[name], full[name])
        injected.update(new)
        return new

    monkeypatch.setattr(ModelGraph, "_foldable_constants", checked)
    graph = load(_padded_stages((3, 4, 5, 6)), input_shapes={"x": (2, 2, 7, 3)})
    assert len(looked) >= 4
    # each constant looked at once, in the round it became one
    assert looked[0] > 0 and sum(looked) <= len(graph.constants)
