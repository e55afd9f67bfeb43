"""The model preparations of onnxinit.passes, against onnxruntime and numpy."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.autodiff import lower
from onnxinit.passes import (
    PASSES,
    batch_statistics,
    fixed_dropout,
    fold_constants,
    infer_shapes,
    types_and_shapes,
    with_outputs,
)
from onnxinit.runtime import make_session
from tests.models import make_model, mlp


def _dropout_model():
    nodes = [
        helper.make_node("Dropout", ["x", "ratio", "training"], ["y", "mask"], name="drop"),
        helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("m", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(0.25, np.float32), "ratio"),
         numpy_helper.from_array(np.array(True), "training")],
    )


def _run(model, feeds):
    session = make_session(model, device="cpu", optimize=False)
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def test_every_pass_declares_whether_it_edits_in_place():
    assert {"set_input_shapes", "batch_statistics", "fixed_dropout"} <= {
        name for name, info in PASSES.items() if info.in_place}
    assert {"infer_shapes", "fold_constants", "with_outputs", "types_and_shapes"} <= {
        name for name, info in PASSES.items() if not info.in_place}
    assert all(info.summary for info in PASSES.values())


def test_functional_passes_leave_their_input_alone():
    model = mlp([6, 5, 3])
    before = model.SerializeToString()
    infer_shapes(model)
    with_outputs(model, ["h0"], {"h0": TensorProto.FLOAT})
    fold_constants(model, set())
    types_and_shapes(model)
    assert model.SerializeToString() == before


def test_dropout_as_identity_with_its_mask_output_used():
    """Training-mode Dropout whose mask feeds another node: the identity, mask all True."""
    model = _dropout_model()
    fixed_dropout(model)
    x = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    out = _run(model, {"x": x})
    np.testing.assert_array_equal(out["y"], x)
    np.testing.assert_array_equal(out["m"], np.ones_like(x))


def test_seeded_dropout_mask_is_the_applied_mask():
    model = _dropout_model()
    fixed_dropout(model, seed=3, shapes={"x": (64, 32)}, types={"x": TensorProto.FLOAT})
    x = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    out, again = _run(model, {"x": x}), _run(model, {"x": x})
    keep = np.random.default_rng(3).random((64, 32)) >= 0.25  # the documented draw
    np.testing.assert_array_equal(out["m"], keep.astype(np.float32))
    np.testing.assert_allclose(out["y"], x * keep / 0.75, rtol=1e-6)
    np.testing.assert_array_equal(out["y"], again["y"])  # a fixed function


def test_lowering_accepts_a_used_dropout_mask():
    lowered = lower(_dropout_model(), {"x": (64, 32)})
    assert not any(n.op_type == "Dropout" for n in lowered.graph.node)


def test_batch_statistics_against_numpy():
    rng = np.random.default_rng(1)
    scale, bias = rng.standard_normal(3).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    mean0, var0 = rng.standard_normal(3).astype(np.float32), rng.random(3).astype(np.float32) + 0.5
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y", "rm", "rv"],
                            epsilon=1e-3, momentum=0.8, training_mode=1)
    model = make_model(
        [node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 3, 5, 5])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "rm", "rv")],
        [numpy_helper.from_array(a, n) for a, n in
         ((scale, "s"), (bias, "b"), (mean0, "m"), (var0, "v"))],
        opset=15,
    )
    types, shapes = types_and_shapes(model)
    batch_statistics(model, shapes, types)
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)
    x = (rng.standard_normal((8, 3, 5, 5)) * 2 + 1).astype(np.float32)
    out = _run(model, {"x": x})
    mean = x.astype(np.float64).mean(axis=(0, 2, 3))
    var = x.astype(np.float64).var(axis=(0, 2, 3))
    expected = (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-3)
    expected = expected * scale[:, None, None] + bias[:, None, None]
    np.testing.assert_allclose(out["y"], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["rm"], 0.8 * mean0 + 0.2 * mean, rtol=1e-5)
    np.testing.assert_allclose(out["rv"], 0.8 * var0 + 0.2 * var, rtol=1e-5)


@pytest.mark.parametrize("opset", [13, 18])
def test_batch_statistics_at_either_reduction_form(opset):
    """Reductions take their axes as an attribute before opset 18, as an input from 18."""
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])
    ones, zeros = np.ones(2, np.float32), np.zeros(2, np.float32)
    model = make_model(
        [node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(a, n) for a, n in
         ((ones, "s"), (zeros, "b"), (zeros, "m"), (ones, "v"))], opset=opset)
    types, shapes = types_and_shapes(model)
    batch_statistics(model, shapes, types)
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32) * 3
    y = _run(model, {"x": x})["y"]
    np.testing.assert_allclose(y.mean(axis=(0, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=(0, 2)), 1, rtol=1e-3)


def test_inference_with_folded_constants_sees_no_weights(monkeypatch):
    """infer_with_constants (run once per round of ModelGraph._refine_shapes) hands shape
    inference the light copy only (large weights as typed inputs), and the folded constant's
    value still fixes the shape that data propagation could not."""
    import onnx

    from onnxinit.passes import infer_with_constants
    from onnxinit.passes.shapes import SMALL_TENSOR

    weight = np.ones((300, 300), np.float32)  # 90,000 elements: a weight
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Shape", ["h"], ["s"]),
             helper.make_node("Mod", ["s", "two"], ["m"]),  # data propagation stops at Mod
             helper.make_node("Reshape", ["h", "m"], ["y"])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 300])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                       [numpy_helper.from_array(weight, "w"),
                        numpy_helper.from_array(np.array([5, 1000], np.int64), "two")])
    seen = []
    infer = onnx.shape_inference.infer_shapes
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes",
                        lambda m, **k: seen.append(m) or infer(m, **k))
    infos = infer_with_constants(model, {"m": np.array([4, 300], np.int64) % [5, 1000]})
    assert len(seen) == 1
    assert all(np.prod(i.dims) <= SMALL_TENSOR for i in seen[0].graph.initializer)
    assert "w" in {i.name for i in seen[0].graph.input}
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in infos}
    assert shapes["m"] == [2] and shapes["y"] == [4, 300]
