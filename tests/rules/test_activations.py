"""Element-wise rules against Monte Carlo runs of the same node in onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from onnxinit.errors import PredictionError
from onnxinit.moments import Moments
from onnxinit.propagate import rule_context
from onnxinit.rules import RuleContext
from onnxinit.rules.elementwise import apply_elementwise, elementwise
from onnxinit.rules.fusion import fused_elementwise
from onnxinit.rules.gaussian import gaussian_moments, leaky_closed
from tests.models import make_model
from tests.oracle import assert_moments_close, monte_carlo, node_model, predict

SHAPE = (4000, 4, 5, 5)  # 100k elements per channel, 400k in all
PER_CHANNEL = Moments.along([-1.0, 0.0, 0.5, 2.0], [0.5, 1.0, 2.0, 0.25], axis=1, rank=4)
# for functions with jumps: no channel where the jump is a rare event (the sample would be noisy)
BROAD = Moments.along([-0.5, 0.0, 0.5, 1.0], [1.0, 1.0, 2.0, 2.0], axis=1, rank=4)
JUMPS = {"Sign", "Floor", "Ceil", "Round", "ThresholdedRelu", "Shrink"}
STANDARD = Moments.scalar(0.0, 1.0)
SHIFTED = Moments.scalar(0.7, 1.5)


def check(node, moments, constants=None, opset=18, axis=1, rtol=0.05, shape=SHAPE, seed=0):
    model = node_model(node, {"x": shape}, constants, opset=opset)
    _, result = predict(model, {"x": moments})
    values = monte_carlo(model, {"x": moments}, seed=seed)
    out = node.output[0]
    assert result.rules[out] not in ("empirical", "pass-through"), result.fallbacks
    assert_moments_close(result.moments[out], values[out], rtol=rtol, axis=axis)
    return result.moments[out]


CASES = [
    ("Relu", {}, None, 18),
    ("LeakyRelu", {"alpha": 0.1}, None, 18),
    ("Elu", {"alpha": 0.7}, None, 18),
    ("Selu", {}, None, 18),
    ("Celu", {"alpha": 2.0}, None, 18),
    ("Gelu", {}, None, 20),
    ("Gelu", {"approximate": "tanh"}, None, 20),
    ("Sigmoid", {}, None, 18),
    ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, None, 18),
    ("HardSwish", {}, None, 18),
    ("Tanh", {}, None, 18),
    ("Softplus", {}, None, 18),
    ("Softsign", {}, None, 18),
    ("Mish", {}, None, 18),
    ("Erf", {}, None, 18),
    ("Abs", {}, None, 18),
    ("Neg", {}, None, 18),
    ("Sin", {}, None, 18),
    ("Cos", {}, None, 18),
    ("ThresholdedRelu", {"alpha": 0.5}, None, 18),
    ("Shrink", {"bias": 0.2, "lambd": 0.6}, None, 18),
    ("Sign", {}, None, 18),
    ("Floor", {}, None, 18),
    ("Ceil", {}, None, 18),
    ("Round", {}, None, 18),
    ("Identity", {}, None, 18),
    ("Swish", {"alpha": 1.5}, None, 24),
]


@pytest.mark.parametrize(("op", "attrs", "constants", "opset"), CASES, ids=lambda c: str(c))
def test_unary_per_channel(op, attrs, constants, opset):
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    check(node, BROAD if op in JUMPS else PER_CHANNEL, constants, opset=opset)


@pytest.mark.parametrize("op", ["Relu", "Tanh", "Floor", "HardSwish"])
def test_unary_scalar_moments(op):
    node = helper.make_node(op, ["x"], ["y"])
    m = check(node, SHIFTED, shape=(400, 500), axis=None)
    assert m.rank == 0 or m.is_scalar


def test_exp_log_sqrt_reciprocal_on_their_domains():
    check(helper.make_node("Exp", ["x"], ["y"]), Moments.scalar(0.3, 0.25), axis=None)
    positive = Moments.along([3.0, 5.0, 8.0, 10.0], [0.2, 0.5, 1.5, 0.25], axis=1, rank=4)
    for op in ("Log", "Sqrt", "Reciprocal"):
        check(helper.make_node(op, ["x"], ["y"]), positive)


def test_log_of_a_gaussian_straddling_zero_is_not_predicted():
    """No rule predicts it; the fallback measures NaN (log of negative samples), and a
    non-finite prediction stops the analysis with an error naming the node (issue 10)."""
    node = helper.make_node("Log", ["x"], ["y"])
    model = node_model(node, {"x": (100, 10)})
    with pytest.raises(PredictionError, match="Log_0.*empirical fallback.*'y'"):
        predict(model, {"x": STANDARD})


def test_prelu_per_channel_slope():
    slope = np.array([0.1, -0.5, 0.25, 2.0], dtype=np.float32).reshape(4, 1, 1)
    node = helper.make_node("PRelu", ["x", "slope"], ["y"])
    m = check(node, STANDARD, {"slope": slope})
    assert m.tracked_axes() == (1,)  # a scalar input becomes per channel through the slope


@pytest.mark.parametrize("opset", [6, 18])
def test_clip_attrs_and_inputs(opset):
    if opset < 11:
        node = helper.make_node("Clip", ["x"], ["y"], min=-0.5, max=1.0)
        constants = None
    else:
        node = helper.make_node("Clip", ["x", "lo", "hi"], ["y"])
        constants = {"lo": np.float32(-0.5), "hi": np.float32(1.0)}
    check(node, BROAD, constants, opset=opset)


def test_clip_with_only_max():
    node = helper.make_node("Clip", ["x", "", "hi"], ["y"])
    check(node, BROAD, {"hi": np.float32(0.5)})


@pytest.mark.parametrize(
    ("op", "first", "value"),
    [
        ("Mul", False, -1.7),
        ("Add", False, 0.8),
        ("Sub", False, 0.8),
        ("Sub", True, 0.8),
        ("Div", False, 4.0),
        ("Pow", False, 2.0),
        ("Pow", False, 3.0),
        ("Pow", True, 2.0),
        ("Mul", True, "per-channel"),
    ],
)
def test_binary_with_a_constant(op, first, value):
    """Mul/Add/Sub/Div/Pow by a constant (the constant first for Sub, Div, Pow)."""
    c = (
        np.array([0.5, -1.0, 2.0, 3.0], dtype=np.float32).reshape(4, 1, 1)
        if value == "per-channel"
        else np.float32(value)
    )
    ins = ["c", "x"] if first else ["x", "c"]
    node = helper.make_node(op, ins, ["y"])
    model = node_model(node, {"x": SHAPE}, {"c": c})
    moments = PER_CHANNEL if op != "Pow" or not first else Moments.scalar(0.2, 0.3)
    graph, result = predict(model, {"x": moments})
    ctx = rule_context(graph, graph.producer["y"], result)
    inputs = [result.moments.get(n) for n in node.input]
    (pred,) = apply_elementwise(inputs, ctx)
    values = monte_carlo(model, {"x": moments})["y"]
    assert_moments_close(pred, values, axis=1)
    assert pred.source is not None and len(pred.source.chain) == 1


def test_reciprocal_division_by_a_signal_straddling_zero_is_refused():
    from onnxinit.rules import RuleError
    node = helper.make_node("Div", ["c", "x"], ["y"])
    model = node_model(node, {"x": (10, 4)}, {"c": np.float32(1.0)})
    graph, result = predict(model, {"x": STANDARD})
    ctx = rule_context(graph, graph.producer["y"], result)
    with pytest.raises(RuleError):
        apply_elementwise([None, result.moments["x"]], ctx)


def test_dropout_identity_and_training():
    node = helper.make_node("Dropout", ["x", "ratio"], ["y", "mask"])
    model = node_model(node, {"x": (100, 8)}, {"ratio": np.float32(0.25)})
    graph, result = predict(model, {"x": SHIFTED})
    assert result.moments["y"].total() == pytest.approx(SHIFTED.total())
    assert "mask" not in result.moments
    from onnxinit.propagate import propagate

    result = propagate(graph, initial={"x": SHIFTED}, dropout=True)
    mean, var = result.moments["y"].total()
    mu, nu = SHIFTED.total()
    assert mean == pytest.approx(mu)
    assert var == pytest.approx((nu + mu**2) / 0.75 - mu**2)
    # and against a training-mode run of the node in onnxruntime
    train = helper.make_node("Dropout", ["x", "ratio", "mode"], ["y"])
    model = node_model(
        train, {"x": (400, 500)}, {"ratio": np.float32(0.25), "mode": np.array(True)}
    )
    values = monte_carlo(model, {"x": SHIFTED})["y"]
    assert_moments_close(result.moments["y"], values)


def test_dropout_ratio_attribute_before_opset_12():
    node = helper.make_node("Dropout", ["x"], ["y"], ratio=0.4)
    model = node_model(node, {"x": (100, 8)}, opset=10)
    graph = predict(model, {"x": SHIFTED})[0]
    from onnxinit.propagate import propagate

    _mean, var = propagate(graph, initial={"x": SHIFTED}, dropout=True).moments["y"].total()
    assert var == pytest.approx((1.5 + 0.49) / 0.6 - 0.49)


# --- the Source path: functions of functions of a Gaussian -------------------------------------


def chain_model(nodes, constants=None, shape=SHAPE, opset=18):
    inits = [
        helper.make_tensor(n, TensorProto.FLOAT, np.shape(v), np.ravel(v))
        for n, v in (constants or {}).items()
    ]
    outputs = sorted({o for n in nodes for o in n.output})
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        inits,
        opset=opset,
    )


def test_chain_integrates_the_real_distribution():
    """Tanh(Relu(x) - 0.5): a Gaussian with the post-ReLU moments would be wrong."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Tanh", ["r"], ["t"]),
        helper.make_node("Sigmoid", ["t"], ["y"]),
    ]
    model = chain_model(nodes)
    _, result = predict(model, {"x": PER_CHANNEL})
    values = monte_carlo(model, {"x": PER_CHANNEL})
    for name in ("r", "t", "y"):
        assert_moments_close(result.moments[name], values[name], axis=1)
    assert [f.key[0] for f in result.moments["y"].source.chain] == ["Relu", "Tanh", "Sigmoid"]
    # Gaussian with matching moments (what a chain-less rule would do) is measurably off
    r = result.moments["r"]
    naive = gaussian_moments(np.tanh, r.mean, r.var, smooth=True)[1]
    got = values["t"].astype(np.float64).var(axis=(0, 2, 3))
    assert np.max(np.abs(naive / got - 1)) > 0.05


def test_tanh_after_conv_with_per_channel_bias():
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((6, 3, 3, 3)) / np.sqrt(27)).astype(np.float32)
    b = np.array([-1.5, -0.5, 0.0, 0.3, 1.0, 2.0], dtype=np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Tanh", ["c"], ["y"]),
    ]
    model = chain_model(nodes, {"w": w, "b": b}, shape=(400, 3, 16, 16))
    _, result = predict(model, {"x": STANDARD})
    values = monte_carlo(model, {"x": STANDARD})
    assert 1 in result.moments["y"].tracked_axes()
    assert_moments_close(result.moments["y"], values["y"], axis=1)


def fused(model, out, moments):
    graph, result = predict(model, moments)
    node_id = graph.producer[out]
    node = graph.node(node_id)
    ctx = rule_context(graph, node_id, result)
    inputs = [result.moments.get(n) for n in node.input]
    return fused_elementwise(inputs, ctx)


def test_swish_as_x_times_sigmoid():
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])]
    model = chain_model(nodes)
    (m,) = fused(model, "y", {"x": PER_CHANNEL})
    values = monte_carlo(model, {"x": PER_CHANNEL})
    assert_moments_close(m, values["y"], axis=1)
    # independence (E = mu1 mu2 ...) would be far off: x and Sigmoid(x) are correlated
    assert m.source is not None and m.source.chain[-1].key[0] == "Fused"


def test_gelu_as_its_erf_formula():
    nodes = [
        helper.make_node("Div", ["x", "sqrt2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["p"]),
        helper.make_node("Mul", ["x", "p"], ["xp"]),
        helper.make_node("Mul", ["xp", "half"], ["y"]),
    ]
    constants = {"sqrt2": np.float32(np.sqrt(2)), "one": np.float32(1.0), "half": np.float32(0.5)}
    model = chain_model(nodes, constants)
    (xp,) = fused(model, "xp", {"x": PER_CHANNEL})
    values = monte_carlo(model, {"x": PER_CHANNEL})
    assert_moments_close(xp, values["xp"], axis=1)
    expected = gaussian_moments(
        lambda x: x * (1 + __import__("scipy").special.erf(x / np.sqrt(2))),
        PER_CHANNEL.mean,
        PER_CHANNEL.var,
    )
    np.testing.assert_allclose(xp.var, expected[1], rtol=1e-6)


def test_x_times_x_and_mish_and_nested_fusion():
    nodes = [
        helper.make_node("Mul", ["x", "x"], ["sq"]),
        helper.make_node("Softplus", ["x"], ["sp"]),
        helper.make_node("Tanh", ["sp"], ["th"]),
        helper.make_node("Mul", ["x", "th"], ["mish"]),
        helper.make_node("Sub", ["mish", "sq"], ["y"]),  # both operands are fused functions of x
    ]
    model = chain_model(nodes)
    values = monte_carlo(model, {"x": PER_CHANNEL})
    for name in ("sq", "mish", "y"):
        (m,) = fused(model, name, {"x": PER_CHANNEL})
        assert_moments_close(m, values[name], axis=1)


def test_no_fusion_without_a_common_ancestor():
    node = helper.make_node("Mul", ["x", "z"], ["y"])
    model = node_model(node, {"x": (10, 4), "z": (10, 4)})
    graph, result = predict(model, {"x": STANDARD, "z": STANDARD})
    ctx = rule_context(graph, graph.producer["y"], result)
    assert fused_elementwise([result.moments["x"], result.moments["z"]], ctx) is None


def test_elementwise_identifies_single_signal_nodes():
    nodes = [
        helper.make_node("Mul", ["x", "c"], ["a"]),
        helper.make_node("Mul", ["x", "a"], ["b"]),
        helper.make_node("Relu", ["b"], ["y"]),
    ]
    model = chain_model(nodes, {"c": np.float32(2.0)}, shape=(4, 4))
    graph, _result = predict(model, {"x": STANDARD})
    ctx = RuleContext(graph.node(graph.producer["y"]), graph.producer["y"], graph)
    f = elementwise(graph.node(graph.producer["a"]), ctx)
    np.testing.assert_allclose(f.fn(np.array([1.5])), [3.0])
    assert elementwise(graph.node(graph.producer["b"]), ctx) is None
    assert elementwise(graph.node(graph.producer["y"]), ctx).key == ("Relu",)


def test_quadrature_matches_closed_forms():
    mu, var = np.array([-2.0, 0.0, 0.4, 3.0]), np.array([0.1, 1.0, 2.0, 4.0])
    relu = lambda x: np.maximum(x, 0.0)
    e, v = gaussian_moments(relu, mu, var)
    ce, cv = leaky_closed(mu, var, 0.0)
    np.testing.assert_allclose(e, ce, rtol=1e-4, atol=1e-12)  # a kink inside a panel
    np.testing.assert_allclose(v, cv, rtol=1e-4)
    e, v = gaussian_moments(np.exp, mu, var, smooth=True)  # lognormal
    np.testing.assert_allclose(e, np.exp(mu + var / 2), rtol=1e-9)
    np.testing.assert_allclose(v, (np.exp(var) - 1) * np.exp(2 * mu + var), rtol=1e-8)
