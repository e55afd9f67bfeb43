"""Scaled convolutions (onnxinit/autodiff/scaled.py): Conv(x, s W0) computed as s Conv(x, W0)
with W0 a constant, and a stride-1 ConvTranspose as a Conv with the flipped kernel. Checked
against onnxruntime's own op on the runtime weight s W0, and in the methods: the programs that
read the scales give the plain programs' alpha-gradients (MetaInit's dGQ/dalpha, GradInit's
gradient and norm gradient), and GradInit's matches central differences on a smooth conv net."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.autodiff.scaled import rewrite, scale_input
from onnxinit.graph import load
from onnxinit.methods.gradinit import GradInitOptions, gradient_and_norm_gradient, gradient_norm
from onnxinit.methods.metainit import MetaInitOptions, gradient_quotient, is_weight
from onnxinit.methods.scaleopt import prepare
from onnxinit.runtime import make_session
from tests.methods.scaleopt_fixtures import central_difference, random_alpha
from tests.methods.resnet_nobn import resnet20_nobn
from tests.models import make_model

CASES = [
    ("Conv", dict(pads=[1, 1, 1, 1]), True, "Conv"),
    ("Conv", dict(pads=[0, 1, 1, 0], strides=[2, 2]), True, "Conv"),
    ("ConvTranspose", dict(pads=[1, 1, 1, 1]), False, "Conv"),
    ("ConvTranspose", dict(pads=[0, 1, 2, 1]), False, "Conv"),
    ("ConvTranspose", dict(pads=[1, 1, 1, 1], strides=[2, 2]), False, "ConvTranspose"),
    ("ConvTranspose", dict(pads=[1, 1, 0, 0], group=2), False, "ConvTranspose"),
]


def _run(model, feeds):
    session = make_session(model, device="cpu", threads=1)
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in names})[0]


@pytest.mark.parametrize("op,attrs,bias,becomes", CASES)
def test_rewrite_gives_the_op_on_the_runtime_weight(op, attrs, bias, becomes):
    """The rewritten graph at scale s equals onnxruntime's op fed the weight s W0; its
    convolution reads W0 as an initializer (prepacked), not the graph input."""
    rng = np.random.default_rng(0)
    group = attrs.get("group", 1)
    w0 = rng.standard_normal((4, 6 // group, 3, 3)).astype(np.float32)
    x = rng.standard_normal((2, 4 if op == "ConvTranspose" else 6, 7, 7)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    inputs = ["x", "w", "b"] if bias else ["x", "w"]
    graph = helper.make_graph(
        [helper.make_node(op, inputs, ["y"], **attrs)], "one",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(a.shape))
         for n, a in (("x", x), ("w", w0), ("b", b))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    s = 0.37
    expected = _run(model, {"x": x, "w": s * w0, "b": b})
    scaled = rewrite(model, {"w": w0})
    got = _run(scaled, {"x": x, "w": s * w0, "b": b,
                        scale_input("w"): np.array(s, dtype=np.float32)})
    assert got.shape == expected.shape
    assert np.max(np.abs(got - expected)) <= 1e-5 * np.max(np.abs(expected))
    constants = {t.name for t in scaled.graph.initializer}
    convolutions = [n for n in scaled.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    assert [n.op_type for n in convolutions] == [becomes]
    assert convolutions[0].input[1] in constants


@pytest.mark.parametrize("same_window", [True, False])
def test_rewrite_reuses_a_convolution_of_the_input_with_w0(same_window):
    """Where the graph already convolves x with a constant equal to W0 over the same window
    (GradInit's stage 2: autodiff/inner.py's Conv(x, p0)), Conv(x, s W0) becomes s times that
    convolution's output, computed where the rewritten node stood; another window keeps its
    own. Values: onnxruntime's ops on the runtime weight."""
    rng = np.random.default_rng(1)
    w0 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    x = rng.standard_normal((2, 3, 7, 7)).astype(np.float32)
    later = dict(pads=[1, 1, 1, 1]) if same_window else dict(pads=[1, 1, 1, 1], strides=[2, 2])
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y1"], pads=[1, 1, 1, 1]),
         helper.make_node("Tanh", ["y1"], ["t"]),
         helper.make_node("Conv", ["x", "c"], ["y2"], kernel_shape=[3, 3], **later)], "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape)),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, list(w0.shape))],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("t", "y2")],
        [numpy_helper.from_array(w0.copy(), "c")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    s = 0.37
    session = make_session(model, device="cpu", threads=1)
    expected = session.run(None, {"x": x, "w": s * w0})
    scaled = rewrite(model, {"w": w0})
    got = make_session(scaled, device="cpu", threads=1).run(
        None, {"x": x, "w": s * w0, scale_input("w"): np.array(s, dtype=np.float32)})
    for a, b in zip(got, expected):
        assert np.max(np.abs(a - b)) <= 1e-5 * np.max(np.abs(b))
    convolutions = [n for n in scaled.graph.node if n.op_type == "Conv"]
    assert len(convolutions) == (1 if same_window else 2)
    assert all(n.input[1] != "w" for n in convolutions)


def smooth_conv_net(seed=0):
    """Conv(3->6, pad 1) - Tanh - Conv(6->8, stride 2) - Tanh - GAP - Gemm: smooth, so central
    differences of its gradient norm are reliable in float32."""
    rng = np.random.default_rng(seed)

    def param(name, shape, scale):
        return numpy_helper.from_array((scale * rng.standard_normal(shape)).astype(np.float32),
                                       name)

    inits = [param("c1.w", (6, 3, 3, 3), 0.3), param("c1.b", (6,), 0.1),
             param("c2.w", (8, 6, 3, 3), 0.2), param("c2.b", (8,), 0.1),
             param("fc.w", (4, 8), 0.5), param("fc.b", (4,), 0.1)]
    nodes = [helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["h1"], pads=[1] * 4),
             helper.make_node("Tanh", ["h1"], ["a1"]),
             helper.make_node("Conv", ["a1", "c2.w", "c2.b"], ["h2"], pads=[1] * 4,
                              strides=[2, 2]),
             helper.make_node("Tanh", ["h2"], ["a2"]),
             helper.make_node("GlobalAveragePool", ["a2"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["logits"], transB=1)]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                            ["N", 3, 6, 6])],
                      [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
                      inits)


def _both(run, compute):
    """compute() with the scaled programs (as the methods run them: blocked convolutions where
    onnxruntime has them), then with the plain ones (neither rewrite)."""
    oracle = run.oracle
    scaled = compute()
    oracle.scaled_convolutions = oracle.blocked_convolutions = False
    try:
        plain = compute()
    finally:
        oracle.scaled_convolutions = oracle.blocked_convolutions = True
    return scaled, plain


def _relative(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def test_gradinit_norm_gradient_scaled_equals_plain_and_differences():
    """GradInit's first stage (g) and constraint gradient d|g|_2/dalpha from the scaled staged
    program equal the plain program's, and central differences of |g|_2 (float32, h 1e-3)."""
    run = prepare(load(smooth_conv_net(), batch_size=8), GradInitOptions(seed=0),
                  min_scale=0.01, device="cpu", hvp="exact")
    oracle, space = run.oracle, run.space
    alpha = random_alpha(run)
    batch = run.source.batch(0)
    scaled, plain = _both(run, lambda: gradient_and_norm_gradient(oracle, space, alpha, batch,
                                                                 "sgd"))
    staged = oracle.staged("gradinit-norm-sgd", 8, None, scaled=True)
    assert scale_input("c1.w") in staged._first_inputs  # stage 1 reads the scales
    assert _relative(scaled[1], plain[1]) < 1e-5  # g
    assert _relative(scaled[2], plain[2]) < 1e-5  # d|g|_2 / dalpha
    numeric = central_difference(
        lambda a: gradient_norm(oracle.gradient(space.theta(a), batch)[1], "sgd"), alpha, h=1e-3)
    assert _relative(scaled[2], numeric) < 2e-3


def test_gradinit_norm_gradient_without_inner_products_is_the_same(monkeypatch):
    """Where the stage-2 inner products cannot be built into the graph (autodiff/inner.py), the
    constraint gradient comes from the full dphi reduced in numpy: the same values."""
    import onnxinit.autodiff.inner as inner
    from onnxinit.errors import OnnxInitError

    def run():
        graph = load(smooth_conv_net(), batch_size=8)
        prepared = prepare(graph, GradInitOptions(seed=0), min_scale=0.01, device="cpu",
                           hvp="exact")
        alpha = random_alpha(prepared)
        batch = prepared.source.batch(0)
        result = gradient_and_norm_gradient(prepared.oracle, prepared.space, alpha, batch, "sgd")
        staged = prepared.oracle.staged("gradinit-norm-sgd", 8, None, scaled=True,
                                        along_values=True)
        return (*result, staged.roles[0].split(":")[0])

    along = run()
    assert along[3] == "dphi.dir"

    def refuse(*args, **kwargs):
        raise OnnxInitError("no inner products here")

    monkeypatch.setattr(inner, "with_inner_products", refuse)
    full = run()
    assert full[3] == "dphi"
    assert along[0] == full[0]
    assert _relative(along[2], full[2]) < 1e-5


def test_metainit_quotient_gradient_scaled_equals_plain():
    """MetaInit's dGQ/dalpha from the scaled third-order program equals the plain program's on
    a normalization-free ResNet-8 (float32; third-order rounding: 1e-4). Central differences
    of GQ are no check in float32 (|q| jumps where an element of g is near 0): the plain program
    is checked against them in float64 (test_metainit), and the scaled one against the PyTorch
    reference trajectory on the ResNet twin (test_metainit, float32, which now runs it)."""
    graph = load(resnet20_nobn(blocks_per_stage=1, image=8), batch_size=4)
    run = prepare(graph, MetaInitOptions(seed=0), min_scale=0.01, select=is_weight,
                  device="cpu", hvp="exact")
    oracle, space = run.oracle, run.space
    alpha = random_alpha(run)
    batch = run.source.batch(0)
    scaled, plain = _both(run, lambda: gradient_quotient(oracle, space, alpha, batch, 1e-5))
    assert scaled.gq == pytest.approx(plain.gq, rel=1e-5)
    assert _relative(scaled.grad, plain.grad) < 1e-4
    program = oracle.derived("metainit-gq", 4, None, scaled=True)
    constants = {t.name for t in program.graph.model.graph.initializer}
    weights = [n.input[1] for n in program.graph.model.graph.node
               if n.op_type in ("Conv", "ConvTranspose")]
    assert not set(weights) & set(oracle.wrt)  # no convolution reads a parameter input
    assert sum(w in constants for w in weights) >= 3 * 9  # forward, dX and more, of 9 convs


def test_directional_gradient_equals_the_gradients_inner_products():
    """The directional program's <dL/dtheta_i, p0_i> (equation (3): sum(dY * Conv(x, p0)) for a
    convolution weight, no im2col product formed) equals the full gradient's inner products
    at a theta that is not a multiple of p0 (GradInit's stepped point), on a ResNet-8 in
    float32; and GradInit's objective gradient from it matches central differences on the
    smooth conv net."""
    from onnxinit.autodiff.backward.windows import WeightGradientGeometry
    from onnxinit.autodiff.scaled import directional
    from onnxinit.methods.gradinit import batch_pair, first_step, loss_after_step

    graph = load(resnet20_nobn(blocks_per_stage=1, image=8), batch_size=4)
    run = prepare(graph, GradInitOptions(seed=0), min_scale=0.01, device="cpu", hvp="exact")
    oracle, space = run.oracle, run.space
    rng = np.random.default_rng(2)
    theta = space.theta(random_alpha(run)) + 0.01 * rng.standard_normal(space.layout.size)
    batch = run.source.batch(0)
    loss, g = oracle.gradient(theta, batch)
    loss_d, inner = oracle.directional(theta, batch)
    assert loss_d == pytest.approx(loss, rel=1e-6)
    assert _relative(inner, space.layout.segment_dot(g, space.theta0)) < 1e-5
    model = directional(oracle.program(4).graph.model, oracle.wrt, oracle.values)
    assert not any(WeightGradientGeometry.of(n) for n in model.graph.node)  # no dW formed

    smooth = prepare(load(smooth_conv_net(), batch_size=8), GradInitOptions(seed=0),
                     min_scale=0.01, device="cpu", hvp="exact")
    alpha = random_alpha(smooth)
    first, second = batch_pair(smooth.source, 0)
    _, g = smooth.oracle.gradient(smooth.space.theta(alpha), first)
    step = first_step(g, "sgd", gamma=1.0)
    _, analytic = loss_after_step(smooth.oracle, smooth.space, alpha, step, second, eta=0.1)
    numeric = central_difference(lambda a: loss_after_step(
        smooth.oracle, smooth.space, a, step, second, eta=0.1)[0], alpha, h=1e-3)
    assert _relative(analytic, numeric) < 2e-3
