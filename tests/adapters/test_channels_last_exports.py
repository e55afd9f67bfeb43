"""A network written channels-last between Transposes around each Conv (how jax2onnx writes
Keras 3's JAX export) is predicted as its channels-first export is (the ``channels_first``
pass), and the pass computes the same values; stretches read by other ops (an attention's
transposed keys, a sequence model's ``[0, 2, 1]`` pair) are left alone. No framework needed:
the two layouts are built here with the same numpy-seeded kernels."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.analysis import analyze
from onnxinit.graph import load
from onnxinit.passes import channels_first
from onnxinit.passes.inference_batchnorm import ConstantGraph
from onnxinit.propagate import propagate
from onnxinit.runtime import make_session
from tests.models import make_model

C, HW = 4, 8
TO_LAST, TO_FIRST = [0, 2, 3, 1], [0, 3, 1, 2]


def _weights():
    rng = np.random.default_rng(0)
    return {
        "w0": rng.standard_normal((C, 3, 3, 3)) / np.sqrt(27),
        "w1": rng.standard_normal((C, C, 3, 3)) * np.sqrt(2 / (9 * C)),
        "w2": rng.standard_normal((C, C, 3, 3)) * np.sqrt(2 / (9 * C)),
        "w3": rng.standard_normal((C, C, 3, 3)) * np.sqrt(2 / (9 * C)),
        "bias": rng.standard_normal(C) * 0.3,
        "k": np.abs(rng.standard_normal(C)) + 0.5,
        "wd": rng.standard_normal((C, 10)) / np.sqrt(C),
    }


def residual_cnn(channels_last: bool) -> onnx.ModelProto:
    """conv0 -> +bias -> relu (a); conv1 -> relu -> conv2 -> *k -> + a -> relu -> conv3 ->
    relu -> global average pool (ReduceMean) -> dense, element-wise ops and the pool in NHWC
    between Transposes when ``channels_last``."""
    w = _weights()
    nodes, consts = [], {n: w[n] for n in ("w0", "w1", "w2", "w3")}

    def conv(x, weight, out):
        nodes.append(helper.make_node("Conv", [x, weight], [out], pads=[1, 1, 1, 1]))
        if channels_last:
            nodes.append(helper.make_node("Transpose", [out], [out + "_t"], perm=TO_LAST))
            return out + "_t"
        return out

    def to_conv(x):
        if channels_last:
            nodes.append(helper.make_node("Transpose", [x], [x + "_f"], perm=TO_FIRST))
            return x + "_f"
        return x

    def vector(name):  # per-channel constant, laid out for the stretch's layout
        consts[name] = w[name] if channels_last else w[name].reshape(C, 1, 1)
        return name

    h = conv("x", "w0", "c0")
    nodes += [helper.make_node("Add", [h, vector("bias")], ["b0"]),
              helper.make_node("Relu", ["b0"], ["a"])]
    h = conv(to_conv("a"), "w1", "c1")
    nodes.append(helper.make_node("Relu", [h], ["r1"]))
    h = conv(to_conv("r1"), "w2", "c2")
    nodes += [helper.make_node("Mul", [h, vector("k")], ["m"]),
              helper.make_node("Add", ["m", "a"], ["s"]),
              helper.make_node("Relu", ["s"], ["r2"])]
    h = conv(to_conv("r2"), "w3", "c3")
    consts["axes"] = np.asarray([1, 2] if channels_last else [2, 3], np.int64)  # global pool
    consts["wd"] = w["wd"]
    nodes += [helper.make_node("Relu", [h], ["r3"]),
              helper.make_node("ReduceMean", ["r3", "axes"], ["pool"], keepdims=0),
              helper.make_node("MatMul", ["pool", "wd"], ["y"])]
    return make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, 3, HW, HW])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v if k == "axes" else np.asarray(v, np.float32), k)
         for k, v in consts.items()])


def _conv_variances(model) -> dict[str, float]:
    result = analyze(model, batch_size=16)
    return {t.name: t.var for t in result.tensors if t.op in ("Conv", "ReduceMean", "MatMul")}


def test_channels_last_export_predicted_as_channels_first():
    # without the pass the convs after a Transpose lost the position classes and the spatial
    # correlation, the pool the spatial correlation: c1, c2, pool, y 0.96x, 0.93x, 0.99x, 0.97x
    # of the channels-first network's predictions
    first = _conv_variances(residual_cnn(False))
    last = _conv_variances(residual_cnn(True))
    assert set(first) == set(last) == {"c0", "c1", "c2", "c3", "pool", "y"}
    for name in first:
        assert last[name] == pytest.approx(first[name], rel=1e-9), name


def test_view_with_a_changed_constant_reaches_the_stretch():
    # the per-channel constants are permuted in the graph, not frozen: a rescaling method's
    # view that changes one (here the residual branch's scale k) is analysed with the new value
    k = _weights()["k"] * np.array([3.0, 0.5, 1.0, 2.0])
    results = []
    for last in (False, True):
        graph = load(residual_cnn(last), batch_size=16)
        view = graph.with_values({"k": k if last else k.reshape(C, 1, 1)})
        before = propagate(graph).moments["y"].var
        results.append((before, propagate(view).moments["y"].var))
    (first_before, first_after), (last_before, last_after) = results
    assert not np.allclose(first_after, first_before, rtol=1e-3)
    np.testing.assert_allclose(last_after, first_after, rtol=1e-9)


def _run(model, x):
    session = make_session(model, device="cpu", optimize=False)
    return session.run(None, {"x": x})[0]


def test_pass_computes_the_same_values():
    model = onnx.shape_inference.infer_shapes(residual_cnn(True))
    rewritten = channels_first(model)
    assert rewritten is not model
    constants = ConstantGraph(rewritten).constants  # a constant's Transpose stays, in the graph
    assert not any(n.op_type == "Transpose" and n.input[0] not in constants
                   for n in rewritten.graph.node)
    x = np.random.default_rng(1).standard_normal((16, 3, HW, HW)).astype(np.float32)
    # the same sums, in another order for the pool: float32 rounding apart
    np.testing.assert_allclose(_run(rewritten, x), _run(model, x), rtol=1e-5, atol=1e-6)


def _sequence_model(perm, then):
    """x [B, S, D] -> MatMul -> Transpose(perm) -> ``then`` nodes reading "t"."""
    rng = np.random.default_rng(2)
    shape = [2, 5, 6] if len(perm) == 3 else [2, 5, 3, 6]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Transpose", ["h"], ["t"], perm=perm), *then]
    return onnx.shape_inference.infer_shapes(make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(rng.standard_normal((6, 6)).astype(np.float32), "w")]))


@pytest.mark.parametrize("case", ["pair", "keys"])
def test_sequence_transposes_left_alone(case):
    if case == "pair":  # [0, 2, 1] is its own inverse: an entry and an exit alike
        model = _sequence_model([0, 2, 1], [
            helper.make_node("Relu", ["t"], ["r"]),
            helper.make_node("Transpose", ["r"], ["y"], perm=[0, 2, 1])])
    else:  # an attention's keys, [B, S, H, D] -> [B, H, D, S], then scaled and multiplied
        model = _sequence_model(TO_LAST, [
            helper.make_node("Mul", ["t", "scale"], ["ts"]),
            helper.make_node("MatMul", ["x", "ts"], ["y"])])
        model.graph.initializer.append(numpy_helper.from_array(np.float32(0.5), "scale"))
    assert channels_first(model) is model
