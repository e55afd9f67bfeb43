"""Layout rules (Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Slice, Split, Gather, Expand,
Tile, Pad, Resize, Cast, Identity, DepthToSpace, SpaceToDepth) against Monte Carlo runs."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.graph import load
from onnxinit.moments import Moments
from onnxinit.rules import RuleContext
from onnxinit.rules.layout import reshape_moments
from onnxinit.rules.shape import gather
from onnxinit.runtime import make_session
from tests.oracle import assert_moments_close, monte_carlo, node_model, predict

PC = Moments.along([-1.0, 0.0, 0.5, 2.0], [0.5, 1.0, 2.0, 0.25], axis=1, rank=4)
SHAPE = (4000, 4, 5, 5)
PF = Moments.along(np.linspace(-1, 1, 8), np.linspace(0.5, 1.5, 8), axis=2, rank=3)
SEQ = (4000, 6, 8)
I64 = np.int64


def run(node, inputs, moments, constants=None, opset=18, out="y", axis=1, rtol=0.05, rule=None):
    model = node_model(node, inputs, constants, opset=opset)
    _, result = predict(model, moments)
    values = monte_carlo(model, moments, seed=3)
    if rule is None:
        assert result.rules[out] not in ("empirical", "pass-through"), result.fallbacks
    else:
        assert result.rules[out] == rule
    assert_moments_close(result.moments[out], values[out], rtol=rtol, axis=axis)
    return result.moments[out]


# ---------------------------------------------------------------------------------------------
# Reshape family


def test_reshape_keeps_channel_axis():
    node = helper.make_node("Reshape", ["x", "s"], ["y"])
    m = run(node, {"x": SHAPE}, {"x": PC}, {"s": np.array([0, 4, -1], I64)})
    assert m.mean.shape == (1, 4, 1)


def test_flatten_expands_channels_to_features_exactly():
    node = helper.make_node("Flatten", ["x"], ["y"], axis=1)
    m = run(node, {"x": (20000, 4, 2, 2)}, {"x": PC})
    np.testing.assert_array_equal(m.mean.ravel(), np.repeat(PC.mean.ravel(), 4))
    np.testing.assert_array_equal(m.var.ravel(), np.repeat(PC.var.ravel(), 4))


def test_reshape_splits_features_into_heads():
    node = helper.make_node("Reshape", ["x", "s"], ["y"])
    s = np.array([0, 0, 2, 4], I64)
    m = run(node, {"x": SEQ}, {"x": PF}, {"s": s}, axis=3)
    assert m.mean.shape == (1, 1, 2, 4)
    np.testing.assert_array_equal(m.mean.ravel(), PF.mean.ravel())
    run(node, {"x": SEQ}, {"x": PF}, {"s": s}, axis=2)


def test_reshape_merging_channel_with_batch_stays_exact():
    m = reshape_moments(PC, (3, 4, 5, 5), (12, 25))
    np.testing.assert_array_equal(m.mean.ravel(), np.tile(PC.mean.ravel(), 3))
    assert m.mean.shape == (12, 1)


def test_reshape_that_scrambles_the_tracked_axis_pools():
    node = helper.make_node("Reshape", ["x", "s"], ["y"])
    x = Moments.along([-1.0, 0.0, 2.0], [0.5, 1.0, 0.3], axis=1, rank=3)
    m = run(node, {"x": (20000, 3, 4)}, {"x": x}, {"s": np.array([0, 4, 3], I64)}, axis=None)
    assert m.is_scalar


def test_flatten_of_two_tracked_axes():
    x = Moments(np.arange(6.0).reshape(1, 2, 3), np.ones((1, 2, 3)))
    m = reshape_moments(x, (5, 2, 3), (5, 6))
    np.testing.assert_array_equal(m.mean.ravel(), np.arange(6.0))


@pytest.mark.parametrize("in_shape, out_shape, tracked", [
    ((3, 5, 4, 1, 6), (3, 5, 4, 6), (0, 4)),  # torchvision MHA's Squeeze of [3, L, N, 1, E]
    ((12, 5, 4), (3, 4, 5, 4), (0, 2)),  # batch x heads split back, features kept
    ((2, 3, 5, 7), (6, 35), (0, 1)),
    ((2, 3, 5, 7), (2, 1, 3, 35, 1), (0, 2, 3)),
    ((4, 6, 5), (2, 2, 30), (0,)),
    ((4, 6, 5), (24, 5), (2,)),
])
def test_reshape_statistics_follow_each_element(in_shape, out_shape, tracked):
    """Per-element statistics, reshaped by numpy, are what the prediction gives each output
    element (tracked axes far apart, untracked axes between them)."""
    rng = np.random.default_rng(1)
    stat = tuple(n if a in tracked else 1 for a, n in enumerate(in_shape))
    x = Moments(rng.standard_normal(stat), rng.random(stat) + 0.1)
    m = reshape_moments(x, in_shape, out_shape)
    for predicted, given in ((m.mean, x.mean), (m.var, x.var)):
        expected = np.broadcast_to(given, in_shape).reshape(out_shape)
        np.testing.assert_array_equal(np.broadcast_to(predicted, out_shape), expected)
    assert m.mean.size < int(np.prod(out_shape))  # statistics, not every element


def test_squeeze_and_unsqueeze_move_the_axis():
    node = helper.make_node("Squeeze", ["x", "axes"], ["y"])
    m = run(node, {"x": (50000, 4, 1, 1)}, {"x": PC}, {"axes": np.array([2, 3], I64)})
    assert m.mean.shape == (1, 4)
    node = helper.make_node("Unsqueeze", ["x", "axes"], ["y"])
    m = run(node, {"x": SEQ}, {"x": PF}, {"axes": np.array([0], I64)}, axis=3)
    assert m.mean.shape == (1, 1, 1, 8)


def test_transpose_permutes():
    node = helper.make_node("Transpose", ["x"], ["y"], perm=[0, 2, 3, 1])
    m = run(node, {"x": SHAPE}, {"x": PC}, axis=3)
    assert m.mean.shape == (1, 1, 1, 4)


def test_transpose_default_reverses():
    node = helper.make_node("Transpose", ["x"], ["y"])
    run(node, {"x": SEQ}, {"x": PF}, axis=0)


# ---------------------------------------------------------------------------------------------
# selection


def test_slice_tracked_axis_with_step():
    node = helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["y"])
    consts = {"st": np.array([3], I64), "en": np.array([-100], I64),
              "ax": np.array([1], I64), "sp": np.array([-2], I64)}  # fmt: skip
    m = run(node, {"x": SHAPE}, {"x": PC}, consts)
    np.testing.assert_array_equal(m.mean.ravel(), PC.mean.ravel()[[3, 1]])


def test_slice_untracked_axes_and_opset9_attrs():
    node = helper.make_node("Slice", ["x"], ["y"], starts=[1, 0], ends=[4, 2], axes=[2, 1])
    run(node, {"x": SHAPE}, {"x": PC}, opset=9)


def test_split_along_channels():
    node = helper.make_node("Split", ["x", "split"], ["y0", "y1"], axis=1)
    model = node_model(node, {"x": SHAPE}, {"split": np.array([1, 3], I64)})
    _, result = predict(model, {"x": PC})
    values = monte_carlo(model, {"x": PC})
    for out in ("y0", "y1"):
        assert result.rules[out] == "split"
        assert_moments_close(result.moments[out], values[out], axis=1)


def test_split_num_outputs():
    node = helper.make_node("Split", ["x"], ["y0", "y1"], axis=2, num_outputs=2)
    model = node_model(node, {"x": SEQ}, opset=18)
    _, result = predict(model, {"x": PF})
    values = monte_carlo(model, {"x": PF})
    for out in ("y0", "y1"):
        assert_moments_close(result.moments[out], values[out], axis=2)


def test_gather_activations_along_tracked_axis():
    node = helper.make_node("Gather", ["x", "i"], ["y"], axis=1)
    m = run(node, {"x": SHAPE}, {"x": PC}, {"i": np.array([3, 0, -4], I64)})
    np.testing.assert_array_equal(m.mean.ravel(), PC.mean.ravel()[[3, 0, 0]])


def test_gather_scalar_index_drops_the_axis():
    # the class token x[:, 0, :]: per-feature statistics move from axis 2 to axis 1
    node = helper.make_node("Gather", ["x", "i"], ["y"], axis=1)
    m = run(node, {"x": SEQ}, {"x": PF}, {"i": np.array(0, I64)})
    assert m.mean.shape == (1, 8)


def _embedding_model(table):
    node = helper.make_node("Gather", ["table", "ids"], ["y"])
    graph = helper.make_graph(
        [node],
        "emb",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [64, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(table, "table")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def test_gather_embedding_table_per_feature():
    rng = np.random.default_rng(0)
    table = rng.standard_normal((50, 8)) * np.linspace(0.2, 2, 8) + np.linspace(-1, 1, 8)
    table = table.astype(np.float32)
    model = _embedding_model(table)
    graph = load(model)
    node = graph.node(graph.order[0])
    ctx = RuleContext(node, graph.order[0], graph)
    (m,) = gather([None, None], ctx)
    assert m.mean.shape == (1, 1, 8)
    # onnxruntime on uniform ids (200 batches of 64 x 32)
    session = make_session(model, device="cpu", optimize=False)
    values = np.stack(
        [session.run(None, {"ids": rng.integers(0, 50, (64, 32))})[0] for _ in range(200)]
    )
    assert_moments_close(m, values.reshape(-1, 32, 8), axis=2)


def test_gather_embedding_through_propagation():
    table = np.random.default_rng(1).standard_normal((50, 8)).astype(np.float32) + 3.0
    graph = load(_embedding_model(table))
    from onnxinit.propagate import propagate

    result = propagate(graph)
    assert result.rules["y"] == "gather"
    m = result.moments["y"]
    np.testing.assert_allclose(m.mean.reshape(-1), table.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(m.var.reshape(-1), table.var(axis=0), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Expand, Tile


def test_expand_broadcasts():
    node = helper.make_node("Expand", ["x", "s"], ["y"])
    run(node, {"x": (20000, 4, 1, 1)}, {"x": PC}, {"s": np.array([20000, 4, 3, 3], I64)})


def test_tile_repeats_tracked_axis():
    node = helper.make_node("Tile", ["x", "r"], ["y"])
    m = run(node, {"x": SHAPE}, {"x": PC}, {"r": np.array([1, 2, 1, 3], I64)})
    assert m.mean.shape == (1, 8, 1, 1)


# ---------------------------------------------------------------------------------------------
# Pad


@pytest.mark.parametrize(
    ("pads", "mode", "value"),
    [
        ([0, 0, 1, 2, 0, 0, 2, 1], "constant", None),
        ([0, 0, 1, 1, 0, 0, 1, 1], "constant", 1.5),
        ([0, 1, 0, 0, 0, 2, 0, 0], "constant", 0.5),
        ([0, 1, 2, 0, 0, 0, 1, 1], "reflect", None),
        ([0, 1, 2, 0, 0, 2, 1, 1], "edge", None),
        ([0, 0, -1, 2, 0, 0, 1, -2], "constant", None),
        ([0, -1, 0, 0, 0, 1, 0, 0], "constant", None),
    ],
)
def test_pad(pads, mode, value):
    ins = ["x", "p"] + (["v"] if value is not None else [])
    consts = {"p": np.array(pads, I64)}
    if value is not None:
        consts["v"] = np.array(value, np.float32)
    node = helper.make_node("Pad", ins, ["y"], mode=mode)
    run(node, {"x": SHAPE}, {"x": PC}, consts)


def test_pad_with_axes_input():
    node = helper.make_node("Pad", ["x", "p", "", "a"], ["y"])
    consts = {"p": np.array([2, 0, 1, 3], I64), "a": np.array([2, 3], I64)}
    run(node, {"x": SHAPE}, {"x": PC}, consts)


def test_pad_opset2_attrs():
    node = helper.make_node("Pad", ["x"], ["y"], pads=[0, 0, 1, 1, 0, 0, 1, 1], value=0.0)
    run(node, {"x": SHAPE}, {"x": PC}, opset=2)


# ---------------------------------------------------------------------------------------------
# Resize, Cast, Identity, DepthToSpace, SpaceToDepth


def test_resize_nearest_unchanged():
    node = helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="nearest")
    run(node, {"x": (2000, 4, 5, 5)}, {"x": PC}, {"sc": np.array([1, 1, 2, 2], np.float32)})


def test_resize_linear():
    # computed per position class from the neighbours' correlation (rules/resize_classes.py;
    # measured before, tests/rules/test_resize_correlation.py has correlated maps)
    node = helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="linear")
    run(node, {"x": (2000, 4, 5, 5)}, {"x": PC}, {"sc": np.array([1, 1, 2, 2], np.float32)},
        rule="resize")  # fmt: skip


def test_cast_and_identity():
    run(helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT), {"x": SHAPE}, {"x": PC})
    m = run(helper.make_node("Identity", ["x"], ["y"]), {"x": SHAPE}, {"x": PC})
    assert m is not None


def test_cast_to_int_is_no_signal():
    model = node_model(helper.make_node("Cast", ["x"], ["y"], to=TensorProto.INT64),
                       {"x": SHAPE})  # fmt: skip
    _, result = predict(model, {"x": PC})
    assert "y" not in result.moments


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space(mode):
    x = Moments.along(np.linspace(-1, 1, 8), np.linspace(0.2, 2, 8), axis=1, rank=4)
    node = helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=2, mode=mode)
    run(node, {"x": (4000, 8, 3, 3)}, {"x": x})


def test_space_to_depth():
    node = helper.make_node("SpaceToDepth", ["x"], ["y"], blocksize=2)
    run(node, {"x": (4000, 4, 4, 4)}, {"x": PC})


def _fallback(model, tensor: str, result) -> Moments:
    """``tensor`` as the empirical fallback measures it (its producer run alone, the random
    producers of a boolean input along with it), whatever rule the propagation used."""
    from onnxinit.rules.empirical import measure_node

    graph = load(model)
    node_id = graph.producer[tensor]
    node = graph.node(node_id)
    inputs = [result.moments.get(n) if graph.is_signal(n) else None for n in node.input]
    outputs = measure_node(inputs, RuleContext(node, node_id, graph), result.moments)
    return outputs[list(node.output).index(tensor)]


@pytest.mark.parametrize("shape", [[4000, 8], [2, 1, 1, 1]])
def test_random_mask_measured_with_its_producers(shape):
    # stochastic depth as torchvision exports it in training mode: a Bernoulli(0.8) mask from
    # Less(RandomUniformLike(x), 0.8), cast to float. The Cast's rule knows it is a Bernoulli
    # draw (rules/random_draws.py); the boolean tensor has no moments, so the fallback, which
    # measured it before that rule, runs the mask's producers along with the Cast (on a larger
    # batch when the mask is tiny: [batch, 1, 1, 1])
    nodes = [
        helper.make_node("RandomUniformLike", ["x"], ["u"], seed=1.0),
        helper.make_node("Less", ["u", "p"], ["keep"]),
        helper.make_node("Cast", ["keep"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x", "mask"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "droppath",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(0.8, np.float32), "p")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    from onnxinit.propagate import propagate

    result = propagate(load(model))
    assert result.rules["mask"] == "cast" and not result.fallbacks
    p = float(np.float32(0.8))
    assert result.moments["mask"].total() == (p, p * (1 - p))
    mean, var = _fallback(model, "mask", result).total()
    assert abs(mean - 0.8) < 0.01 and abs(var - 0.16) < 0.01
    # y = x * mask, independent: E[y^2] = E[x^2] E[mask^2] = 0.8
    assert abs(result.moments["y"].total()[1] - 0.8) < 0.02


def test_random_mask_of_constant_shape_is_drawn_over_several_runs():
    # the mask's shape comes from constants ([2, 1, 1, 1]): no batch to enlarge, so the
    # fallback runs the random nodes repeatedly (500 runs, 1000 draws); the rules know the
    # draws' moments exactly
    nodes = [
        helper.make_node("ConstantOfShape", ["shp"], ["z"],
                         value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0])),
        helper.make_node("RandomUniformLike", ["z"], ["u"]),
        helper.make_node("Less", ["u", "p"], ["keep"]),
        helper.make_node("Cast", ["keep"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x", "mask"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "droppath",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(0.8, np.float32), "p"),
         numpy_helper.from_array(np.array([2, 1, 1, 1], np.int64), "shp")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    from onnxinit.propagate import propagate

    result = propagate(load(model))
    assert result.moments["u"].total() == (0.5, 1 / 12) and not result.fallbacks
    u_mean, u_var = _fallback(model, "u", result).total()
    assert abs(u_mean - 0.5) < 0.05 and abs(u_var - 1 / 12) < 0.01
    mean, var = _fallback(model, "mask", result).total()
    assert abs(mean - 0.8) < 0.05 and abs(var - 0.16) < 0.03


def test_pad_of_a_channels_last_map_keeps_per_feature_statistics():
    """A constant Pad of the spatial axes of a channels-last ``[N, H, W, C]`` map (Swin pads
    its map to a multiple of the window, by 0 when it is one) followed by a map over the
    features: the per-feature variances stay per feature (position classes, which assume
    channels on axis 1, pooled them into one for zero pads: V of Swin's windowed attention
    0.9x, its P V 0.73x)."""
    rng = np.random.default_rng(6)
    w = np.diag([0.1, 0.3, 1.0, 3.0]).astype(np.float32) @ rng.standard_normal((4, 3)).astype(
        np.float32)
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Pad", ["x", "pads"], ["p"]),
         helper.make_node("MatMul", ["p", "w"], ["y"])], "pad_nhwc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [512, 6, 6, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [512, 6, 6, 3])],
        [numpy_helper.from_array(np.zeros(8, np.int64), "pads"),
         numpy_helper.from_array(w, "w")]),
        opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    moments = {"x": Moments(np.zeros((1, 1, 1, 4)), np.array([0.1, 1.0, 4.0, 9.0]).reshape(
        1, 1, 1, 4))}
    _, result = predict(model, moments)
    measured = monte_carlo(model, moments)["y"].astype(np.float64).var()
    assert abs(result.moments["y"].total()[1] / measured - 1) < 0.05
