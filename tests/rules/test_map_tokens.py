"""A feature map unfolded into sequences by layout ops (MobileViT's unfold) keeps its spatial
correlation as the tokens' covariance (rules/map_tokens.py), and a sequence folded back into a
map keeps its tokens' covariance as the map's spatial correlation (rules/tokens_map.py):
against onnxruntime."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.models import make_model
from tests.oracle import monte_carlo, predict

N, C, H, P = 512, 8, 8, 2  # samples, channels, map side, patch side
NP, PA = (H // P) ** 2, P * P  # patches (tokens per sequence), pixels per patch (sequences)


def _const(inits, name, value, dtype=np.float32):
    inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
    return name


def _unfold(nodes, inits, x: str, out: str):
    """HF MobileViT's unfolding: [N, C, H, W] -> [N*pA, nP, C]."""
    n_side = H // P
    steps = [("Reshape", [N * C * n_side, P, n_side, P]), ("Transpose", [0, 2, 1, 3]),
             ("Reshape", [N, C, NP, PA]), ("Transpose", [0, 3, 2, 1]),
             ("Reshape", [N * PA, NP, C])]
    _chain(nodes, inits, x, out, steps, "u")


def _fold(nodes, inits, x: str, out: str):
    """HF MobileViT's folding: [N*pA, nP, C] -> [N, C, H, W]."""
    n_side = H // P
    steps = [("Reshape", [N, PA, NP, C]), ("Transpose", [0, 3, 2, 1]),
             ("Reshape", [N * C * n_side, n_side, P, P]), ("Transpose", [0, 2, 1, 3]),
             ("Reshape", [N, C, H, H])]
    _chain(nodes, inits, x, out, steps, "f")


def _chain(nodes, inits, x, out, steps, tag):
    for i, (op, arg) in enumerate(steps):
        y = out if i == len(steps) - 1 else f"{tag}{i}"
        if op == "Reshape":
            nodes.append(helper.make_node("Reshape", [x, _const(inits, f"{tag}s{i}", arg,
                                                                np.int64)], [y]))
        else:
            nodes.append(helper.make_node("Transpose", [x], [y], perm=arg))
        x = y


def test_an_unfolded_maps_tokens_keep_its_spatial_correlation():
    # a positive 5x5 kernel, unpadded (every position alike): positions 2 apart (a sequence's
    # neighbouring tokens) correlated about 0.6
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    w = rng.uniform(0.5, 1.5, (C, C, 5, 5)) / 20.0
    nodes.append(helper.make_node("Conv", ["x", _const(inits, "w", w)], ["m"]))
    _unfold(nodes, inits, "m", "t")
    nodes.append(helper.make_node("ReduceMean", ["t"], ["y"], axes=[1], keepdims=1))
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                             [N, C, H + 4, H + 4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits,
                       opset=13)
    x = Moments.scalar(0.0, 1.0)
    _, result = predict(model, {"x": x})
    measured = monte_carlo(model, {"x": x})["y"].astype(np.float64)
    predicted = float(np.mean(result.moments["y"].var))
    # before: independent tokens, nu/16 (0.23x of the measured variance)
    np.testing.assert_allclose(predicted, measured.var(axis=0).mean(), rtol=0.1)


def test_a_folded_sequences_tokens_set_the_maps_correlation():
    # each sequence's tokens share their attention output (nearly uniform probabilities:
    # every token gets its sequence's mean of V) besides a token's own part (an independent
    # input, the skip's correlation with the branch being another matter): correlation 0.5
    # between the tokens of one sequence, 0 between sequences; folded back, pixels 2 apart
    # are correlated 0.5 and neighbours not, which a 3x3 average pool reads
    rng = np.random.default_rng(1)
    nodes, inits = [], []
    nodes.append(helper.make_node("MatMul", ["x", _const(inits, "wq", rng.standard_normal(
        (C, C)) * 1e-3)], ["q"]))
    nodes.append(helper.make_node("Transpose", ["q"], ["kt"], perm=[0, 2, 1]))
    nodes.append(helper.make_node("MatMul", ["q", "kt"], ["logits"]))
    nodes.append(helper.make_node("Softmax", ["logits"], ["p"], axis=-1))
    nodes.append(helper.make_node("MatMul", ["p", "x"], ["o"]))
    nodes.append(helper.make_node("Mul", ["z", _const(inits, "skip", 0.25)], ["xs"]))
    nodes.append(helper.make_node("Add", ["o", "xs"], ["t"]))
    _fold(nodes, inits, "t", "m")
    nodes.append(helper.make_node("AveragePool", ["m"], ["y"], kernel_shape=[3, 3]))
    model = make_model(nodes, [helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                             [N * PA, NP, C]) for name in "xz"],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits,
                       opset=13)
    x = Moments.scalar(0.0, 1.0)
    _, result = predict(model, {"x": x, "z": x})
    measured = monte_carlo(model, {"x": x, "z": x})["y"].astype(np.float64)
    predicted = float(np.mean(result.moments["y"].var))
    np.testing.assert_allclose(predicted, measured.var(axis=0).mean(), rtol=0.1)
