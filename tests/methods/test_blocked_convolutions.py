"""Blocked convolutions (onnxinit/autodiff/blocked.py): a Conv or stride-1 ConvTranspose whose
weight is a graph input, rewritten onto onnxruntime's NCHWc kernels with the weight reordered
in the graph, computes what torch's conv2d / conv_transpose2d compute in float64; shapes
onnxruntime does not block, and constant weights, are left as they are."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from onnxinit.autodiff import blocked
from onnxinit.autodiff.execution import Runner

torch = pytest.importorskip("torch")


def one_conv(op, x_shape, w_shape, bias, constant_weight=None, **attrs):
    inputs = ["x", "w"] + (["b"] if bias else [])
    infos = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))]
    initializers = []
    if constant_weight is None:
        infos.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, list(w_shape)))
    else:
        from onnx import numpy_helper
        initializers.append(numpy_helper.from_array(constant_weight, "w"))
    if bias:
        channels = w_shape[0] if op == "Conv" else w_shape[1]
        infos.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, [channels]))
    graph = helper.make_graph([helper.make_node(op, inputs, ["y"], **attrs)], "one", infos,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def torch_reference(op, feeds, pads, strides):
    """float64 torch on the same arrays (symmetric pads)."""
    x, w = (torch.from_numpy(feeds[k].astype(np.float64)) for k in ("x", "w"))
    b = torch.from_numpy(feeds["b"].astype(np.float64)) if "b" in feeds else None
    if op == "Conv":
        y = torch.nn.functional.conv2d(x, w, b, stride=strides, padding=pads)
    else:
        y = torch.nn.functional.conv_transpose2d(x, w, b, stride=strides, padding=pads)
    return y.numpy()


def blocks_here(c_in, c_out):
    """Whether this onnxruntime blocks a constant 3x3 convolution of these channels."""
    return blocked._template(blocked._frozen({"pads": [1, 1, 1, 1]}), (c_out, c_in, 3, 3),
                             False, False) is not None


CASES = [  # op, C_in, C_out, side, bias, stride
    ("Conv", 16, 16, 8, False, 1),
    ("Conv", 16, 16, 8, True, 1),
    ("Conv", 3, 16, 9, True, 1),  # fewer input channels than a block: NCHW input
    ("Conv", 16, 32, 8, False, 2),
    ("Conv", 64, 32, 4, True, 1),
    ("Conv", 20, 20, 5, False, 1),  # channels padded to whole blocks
    ("ConvTranspose", 16, 16, 8, False, 1),
    ("ConvTranspose", 32, 16, 6, False, 1),
]


@pytest.mark.parametrize("op,c_in,c_out,side,bias,stride", CASES)
def test_blocked_equals_torch_float64(op, c_in, c_out, side, bias, stride):
    if not blocks_here(16, 16):
        pytest.skip("this onnxruntime has no NCHWc kernels")
    w_shape = (c_out, c_in, 3, 3) if op == "Conv" else (c_in, c_out, 3, 3)
    model = one_conv(op, (4, c_in, side, side), w_shape, bias, pads=[1] * 4,
                     strides=[stride] * 2)
    rewritten = blocked.rewrite(model)
    assert any(n.domain == blocked.DOMAIN and n.op_type == "Conv"
               for n in rewritten.graph.node)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((4, c_in, side, side)).astype(np.float32),
             "w": rng.standard_normal(w_shape).astype(np.float32)}
    if bias:
        feeds["b"] = rng.standard_normal(c_out).astype(np.float32)
    (ours,) = Runner(rewritten, device="cpu", float64=False).run(feeds)
    expected = torch_reference(op, feeds, 1, stride)
    assert ours.shape == expected.shape
    scale = np.sqrt(9 * c_in)  # each output sums 9 C_in unit products
    assert np.max(np.abs(ours - expected)) < 1e-5 * scale


@pytest.mark.parametrize("op,attrs,w_shape,x_channels", [
    ("ConvTranspose", {"strides": [2, 2]}, (16, 16, 3, 3), 16),  # not a convolution
    ("Conv", {"group": 2}, (16, 8, 3, 3), 16),  # grouped
    ("Conv", {"pads": [1, 1]}, (16, 16, 3), 16),  # 1-D
])
def test_shapes_onnxruntime_does_not_block_are_left(op, attrs, w_shape, x_channels):
    attrs = {"pads": [1] * 2 * (len(w_shape) - 2), **attrs}
    side = [8] * (len(w_shape) - 2)
    model = one_conv(op, (2, x_channels, *side), w_shape, False, **attrs)
    assert list(blocked.rewrite(model).graph.node) == list(model.graph.node)


def test_constant_weights_are_left_to_onnxruntime():
    weight = np.ones((16, 16, 3, 3), dtype=np.float32)
    model = one_conv("Conv", (2, 16, 8, 8), weight.shape, False, constant_weight=weight,
                     pads=[1] * 4)
    assert list(blocked.rewrite(model).graph.node) == list(model.graph.node)


def test_convolutions_of_one_shape_share_one_layout():
    """A second-order program uses each weight a dozen times: one layout initializer per
    distinct (shape, attributes), each convolution still equal to torch's."""
    if not blocks_here(16, 16):
        pytest.skip("this onnxruntime has no NCHWc kernels")
    shape = [16, 16, 3, 3]
    infos = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in
             (("x", [2, 16, 8, 8]), ("w1", shape), ("w2", shape), ("w3", [32, 16, 3, 3]))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1] * 4),
             helper.make_node("Conv", ["h", "w2"], ["g"], pads=[1] * 4),
             helper.make_node("Conv", ["g", "w3"], ["y"], pads=[1] * 4)]
    model = helper.make_model(helper.make_graph(
        nodes, "three", infos, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]),
        opset_imports=[helper.make_opsetid("", 17)])
    rewritten = blocked.rewrite(model)
    layouts = [t for t in rewritten.graph.initializer if "layout" in t.name]
    gathered = {n.input[1] for n in rewritten.graph.node if n.op_type == "Gather"}
    assert len(layouts) == 2 and gathered == {t.name for t in layouts}
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((2, 16, 8, 8)).astype(np.float32),
             **{w: 0.1 * rng.standard_normal(s).astype(np.float32)
                for w, s in (("w1", shape), ("w2", shape), ("w3", [32, 16, 3, 3]))}}
    (ours,) = Runner(rewritten, device="cpu", float64=False).run(feeds)
    x = torch.from_numpy(feeds["x"].astype(np.float64))
    for w in ("w1", "w2", "w3"):
        x = torch.nn.functional.conv2d(x, torch.from_numpy(feeds[w].astype(np.float64)),
                                       padding=1)
    assert np.max(np.abs(ours - x.numpy())) < 1e-5 * np.max(np.abs(x.numpy()))
