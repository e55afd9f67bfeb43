"""The Python API: loss heads, parameter selection, overrides, accumulation, errors, HVP."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.autodiff import CrossEntropy, GradientProgram, float_parameters, gradients, hvp
from onnxinit.errors import InvalidOptionError, MissingRuleError
from tests.models import mlp

from .gradcheck import check_gradients, node, randn


def _model(nodes, inputs, output, inits, opset=18):
    graph = helper.make_graph(
        nodes, "m", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _log_softmax(z, axis):
    z = z - z.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


@pytest.mark.parametrize("shape,label_shape,axis", [
    ((4, 5), (4,), 1), ((2, 3, 5), (2, 3), 2), ((2, 5, 3, 3), (2, 3, 3), 1),
])
def test_cross_entropy_value_and_class_axis(shape, label_shape, axis):
    model = _model([node("Mul", ["x", "w"])], [("x", shape)], "y", {"w": randn(1, seed=1)})
    x = randn(*shape)
    labels = np.random.default_rng(0).integers(0, shape[axis], label_shape)
    loss, grads = gradients(model, {"x": x}, labels=labels, dtype="float64")
    log_p = _log_softmax(x.astype(np.float64) * randn(1, seed=1), axis)
    picked = np.take_along_axis(log_p, np.expand_dims(labels, axis), axis)
    assert loss == pytest.approx(-picked.mean(), rel=1e-12)
    assert grads["w"].shape == (1,)


def test_cross_entropy_rejects_labels_of_another_shape():
    model = _model([node("Mul", ["x", "w"])], [("x", (4, 5))], "y", {"w": randn(1)})
    with pytest.raises(InvalidOptionError, match="do not fit"):
        gradients(model, {"x": randn(4, 5)}, labels=np.zeros(3, np.int64))


def test_mse_and_scalar_output_heads_agree():
    model = mlp([3, 4, 2], activation="Tanh")
    x, t = randn(5, 3), randn(5, 2, seed=1)
    loss, grads = gradients(model, {"x": x}, loss="mse", labels=t)
    diff = [node("Sub", ["h1", "t"], "d"), node("Mul", ["d", "d"], "s"),
            node("ReduceMean", ["s"], "scalar", keepdims=0)]
    scalar = onnx.ModelProto()
    scalar.CopyFrom(model)
    scalar.graph.node.extend(diff)
    scalar.graph.initializer.append(numpy_helper.from_array(t, "t"))
    scalar.graph.ClearField("output")
    scalar.graph.output.append(helper.make_tensor_value_info("scalar", TensorProto.FLOAT, []))
    loss2, grads2 = gradients(scalar, {"x": x}, loss="output", wrt=list(grads))
    assert loss2 == pytest.approx(loss, rel=1e-6)
    for name in grads:
        np.testing.assert_allclose(grads2[name], grads[name], rtol=1e-5, atol=1e-7)


def test_params_override_equals_rebuilt_model():
    model = mlp([3, 4, 2], activation="Relu")
    x, labels = randn(6, 3), np.array([0, 1, 1, 0, 1, 0])
    program = GradientProgram(model, {"x": x.shape}, device="cpu")
    scaled = {"w0": program.parameters["w0"] * 2.5}
    loss, grads = program.gradients({"x": x}, labels, params=scaled)
    rebuilt = onnx.ModelProto()
    rebuilt.CopyFrom(model)
    rebuilt.graph.initializer[0].CopyFrom(numpy_helper.from_array(scaled["w0"], "w0"))
    loss2, grads2 = gradients(rebuilt, {"x": x}, labels=labels, device="cpu")
    assert loss == pytest.approx(loss2, rel=1e-6)
    for name in grads:
        np.testing.assert_allclose(grads[name], grads2[name], rtol=1e-5, atol=1e-7)
    assert program.loss({"x": x}, labels, params=scaled) == pytest.approx(loss, rel=1e-6)


def test_tied_weight_and_residual_fork_accumulate():
    check_gradients([node("MatMul", ["a", "w"], "h"), node("Tanh", ["h"], "t"),
                     node("MatMul", ["t", "w"], "u"), node("Add", ["u", "h"])],
                    {"a": randn(2, 3), "w": randn(3, 3, seed=1)})


def test_parameters_exclude_configuration_inputs():
    nodes = [node("Clip", ["x", "lo", "hi"], "c"), node("Pow", ["c", "e"], "p"),
             node("Mul", ["p", "w"], "m"), node("Reshape", ["m", "shape"])]
    inits = {"lo": np.float32(-1), "hi": np.float32(1), "e": np.float32(2), "w": randn(4),
             "shape": np.array([4, 2], np.int64), "unused": randn(3)}
    assert list(float_parameters(_model(nodes, [("x", (2, 4))], "y", inits))) == ["w"]


def test_integer_paths_are_skipped_and_missing_rules_are_named():
    nodes = [node("Shape", ["x"], "s"), node("Cast", ["s"], "sf", to=1),
             node("ReduceSum", ["sf"], "n", keepdims=0), node("Mul", ["x", "w"], "m"),
             node("Mul", ["m", "n"], "y")]
    model = _model(nodes, [("x", (2, 3))], "y", {"w": randn(3)})
    _, grads = gradients(model, {"x": randn(2, 3)}, loss="mse", labels=randn(2, 3))
    assert grads["w"].shape == (3,)
    einsum = helper.make_node("Einsum", ["x", "w"], ["y"], equation="ij,j->ij", name="mix")
    model = _model([einsum], [("x", (2, 3))], "y", {"w": randn(3)})
    with pytest.raises(MissingRuleError, match="Einsum node 'mix'"):
        gradients(model, {"x": randn(2, 3)}, loss="mse", labels=randn(2, 3))


def test_wrt_subset_unknown_names_and_wrong_shapes():
    model = mlp([3, 4, 2])
    x, labels = randn(5, 3), np.zeros(5, np.int64)
    _, grads = gradients(model, {"x": x}, labels=labels, wrt=["b1"])
    assert list(grads) == ["b1"]
    with pytest.raises(InvalidOptionError, match="not float parameters"):
        gradients(model, {"x": x}, labels=labels, wrt=["nope"])
    program = GradientProgram(model, {"x": x.shape})
    with pytest.raises(InvalidOptionError, match="compiled for"):
        program.gradients({"x": randn(6, 3)}, labels)
    with pytest.raises(InvalidOptionError, match="needs labels"):
        program.gradients({"x": x})


def test_explicit_class_axis_head():
    model = _model([node("Mul", ["x", "w"])], [("x", (2, 3, 3))], "y", {"w": randn(1)})
    labels = np.zeros((2, 3), np.int64)
    loss_first, _ = gradients(model, {"x": randn(2, 3, 3)}, loss=CrossEntropy(axis=1),
                              labels=labels)
    loss_last, _ = gradients(model, {"x": randn(2, 3, 3)}, labels=labels)
    assert loss_first != pytest.approx(loss_last)


def test_one_shot_hvp_is_the_directional_derivative_of_the_gradient():
    """onnxinit.autodiff.hvp (H v) against a float64 difference quotient of two gradient passes
    taken by hand at a much smaller step, on a subset of the parameters."""
    model = mlp([4, 6, 3], activation="Tanh", seed=2)
    rng = np.random.default_rng(0)
    feeds, labels = {"x": rng.standard_normal((5, 4))}, np.array([0, 2, 1, 1, 0])
    program = GradientProgram(model, {"x": (5, 4)}, dtype="float64")
    v = {"w0": rng.standard_normal((6, 4)), "b1": rng.standard_normal(3)}
    ours = hvp(model, None, v, feeds, labels, dtype="float64")
    assert set(ours) == {"w0", "b1"}
    step = 1e-7
    shifted = [program.gradients(feeds, labels, {n: program.parameters[n] + s * step * v[n]
                                                 for n in v})[1] for s in (1, -1)]
    for name in v:
        expected = (shifted[0][name] - shifted[1][name]) / (2 * step)
        np.testing.assert_allclose(ours[name], expected, rtol=1e-5, atol=1e-9)
