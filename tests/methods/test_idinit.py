"""IDInit: the patterns, identity on plain networks, layouts, and the residual-network checks.

"A residual block's output equals its input" is read as: the Add's output equals what the skip
path delivers to it, which is the block input itself for an identity shortcut (the tensor after
the previous block's post-Add ReLU; the ReLU after this Add is outside the block and leaves the
non-negative result unchanged), and the padded-identity projection of the block input for a
projection shortcut (a strided 1x1 convolution that copies input channel c mod C_in into output
channel c). Both are checked: relative error ||add - skip|| / ||skip|| < 1e-5, and the skip
equal to the block input (or its projection) exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.graph import load
from onnxinit.measure import measure
from onnxinit.methods import METHODS
from onnxinit.methods.idinit import IDInitOptions, padded_identity, plan, zero_preserving
from onnxinit.residual import residual_blocks
from onnxinit.writeback import apply_plan

from ..models import make_model, mlp
from ..samples import sample
from .resnet_nobn import resnet20_nobn

SAMPLE = Path(__file__).resolve().parents[2] / "sample_models" / "resnet20_nobn.onnx"


def _idinit(model, batch_size=4, **options):
    graph = load(model, batch_size=batch_size)
    p = plan(graph, IDInitOptions(**options))
    return apply_plan(model, p), p, graph


def _run(model, feeds, extra=()):
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for name in extra:
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def _weights(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


# --- patterns ----------------------------------------------------------------------------------


def test_padded_identity_square_tall_wide():
    assert np.array_equal(padded_identity(3, 3, 2.0), 2 * np.eye(3))
    tall = padded_identity(5, 2)  # identity blocks stacked down the rows
    assert np.array_equal(tall, np.array([[1, 0], [0, 1], [1, 0], [0, 1], [1, 0]]))
    wide = padded_identity(2, 5)  # output i sums inputs i, i+2, i+4
    assert np.array_equal(wide, np.array([[1, 0, 1, 0, 1], [0, 1, 0, 1, 0]]))


def test_zero_preserving_rows_sum_to_zero_and_use_every_column():
    eps = 1e-6
    square = zero_preserving(4, 4, eps)
    assert np.allclose(square, eps * (np.eye(4) - np.roll(np.eye(4), 1, axis=1)))
    tall = zero_preserving(6, 3, eps)
    assert np.allclose(tall.sum(axis=1), 0) and (tall != 0).sum() == 12
    wide = zero_preserving(3, 12, eps)  # 4 entries a row: +, -, +, -
    assert np.allclose(wide.sum(axis=1), 0) and np.all((wide != 0).sum(axis=0) == 1)
    assert np.array_equal(wide[0], eps * np.array([1, 0, 0, -1, 0, 0, 1, 0, 0, -1, 0, 0]))
    odd = zero_preserving(2, 5, eps)  # row 0 holds three entries: sums to eps
    assert np.allclose(odd.sum(axis=1), [eps, 0])


# --- plain networks ----------------------------------------------------------------------------


def test_linear_square_mlp_returns_its_input_exactly():
    model = mlp([8, 8, 8, 8], activation=None, seed=3)
    new, p, _ = _idinit(model)
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    y = next(iter(_run(new, {"x": x}).values()))
    assert np.array_equal(y, x)
    assert all(np.all(_weights(new)[f"b{i}"] == 0) for i in range(3))
    assert {entry["role"] for entry in p.report["layers"]} == {"main"}
    assert p.report["residual_blocks"] == []


def test_relu_square_mlp_computes_relu_of_its_input():
    model = mlp([6, 6, 6, 6], activation="Relu", seed=1)
    new, _, _ = _idinit(model)
    x = np.random.default_rng(1).standard_normal((5, 6)).astype(np.float32)
    assert np.array_equal(next(iter(_run(new, {"x": x}).values())), np.maximum(x, 0))


def test_non_square_layers_keep_the_variance_under_the_rule():
    """4 -> 12 (tall: copies) -> 3 (wide: each output sums 4 inputs, times the gain)."""
    model = mlp([4, 12, 3], activation=None)
    new, p, _ = _idinit(model)
    w = _weights(new)
    assert np.array_equal(w["w0"], padded_identity(12, 4))
    gain = p.report["layers"][1]["gain"]
    assert gain == pytest.approx(0.5, rel=1e-6)  # sqrt(D_out / D_in) for independent inputs
    assert np.allclose(w["w1"], 0.5 * padded_identity(3, 12))
    assert p.report["layers"][1]["output_var"] == pytest.approx(1.0, rel=1e-6)


def test_gemm_transb_both_ways_and_a_matmul_weight_behind_a_transpose():
    """The replacement is written in the initializer's layout: Gemm B as (K, N) when
    transB=0, and a MatMul weight stored (N, K) and transposed by a node."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 6)).astype(np.float32), "b_kn"),
        numpy_helper.from_array(rng.standard_normal((3, 6)).astype(np.float32), "w_nk"),
        numpy_helper.from_array(rng.standard_normal((5, 3)).astype(np.float32), "c_nk"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "b_kn"], ["h"], transB=0, name="gemm_kn"),
        helper.make_node("Transpose", ["w_nk"], ["w_kn"], perm=[1, 0], name="t"),
        helper.make_node("MatMul", ["h", "w_kn"], ["g"], name="mm"),
        helper.make_node("Gemm", ["g", "c_nk"], ["y"], transB=1, name="gemm_nk"),
    ]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [7, 4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [7, 5])], inits)
    new, p, _ = _idinit(model)
    w = _weights(new)
    assert w["b_kn"].shape == (4, 6) and w["w_nk"].shape == (3, 6) and w["c_nk"].shape == (5, 3)
    assert np.array_equal(w["b_kn"], padded_identity(6, 4).T)
    gain = p.report["layers"][1]["gain"]
    assert np.allclose(w["w_nk"], gain * padded_identity(3, 6))  # (N, K) is W itself
    assert np.array_equal(w["c_nk"], padded_identity(5, 3))
    x = np.random.default_rng(2).standard_normal((7, 4)).astype(np.float32)
    expected = x @ padded_identity(6, 4).T @ (gain * padded_identity(3, 6)).T
    expected = expected @ padded_identity(5, 3).T
    assert np.allclose(_run(new, {"x": x})["y"], expected, rtol=1e-6, atol=1e-6)


def _conv_stack(kernel=3):
    """Conv 8->8 (2 groups), depthwise Conv, ConvTranspose 8->8 (2 groups), all 'same'."""
    rng = np.random.default_rng(0)
    k, p = kernel, kernel // 2
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 4, k, k)).astype(np.float32), "wg"),
        numpy_helper.from_array(rng.standard_normal((8, 1, k, k)).astype(np.float32), "wd"),
        numpy_helper.from_array(rng.standard_normal((8, 4, k, k)).astype(np.float32), "wt"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "bt"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "wg"], ["a"], group=2, pads=[p] * 4, name="grouped"),
        helper.make_node("Conv", ["a", "wd"], ["b"], group=8, pads=[p] * 4, name="depthwise"),
        helper.make_node("ConvTranspose", ["b", "wt", "bt"], ["y"], group=2, pads=[p] * 4,
                         name="transposed"),
    ]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 12, 12])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8, 12, 12])], inits)


def test_dirac_convolutions_with_groups_and_transposed_are_the_identity():
    new, _, _ = _idinit(_conv_stack(), idinit_conv="dirac")
    x = np.random.default_rng(0).standard_normal((2, 8, 12, 12)).astype(np.float32)
    assert np.array_equal(_run(new, {"x": x})["y"], x)
    assert np.all(_weights(new)["bt"] == 0)


def test_patch_maintain_convolution_pattern_per_group():
    new, p, _ = _idinit(_conv_stack(), idinit_conv="patch")
    w = _weights(new)
    gains = {e["node"]: e["gain"] for e in p.report["layers"]}
    for group in (w["wg"][:4], w["wg"][4:]):  # each group: 4 x (4*9), consecutive taps
        assert np.allclose(group.reshape(4, 36), gains["grouped"] * padded_identity(4, 36))
    assert np.allclose(w["wd"].reshape(8, 9), gains["depthwise"])  # a box filter per channel
    for group in (w["wt"][:4], w["wt"][4:]):  # ConvTranspose: (C_in/g, C_out/g, k, k)
        matrix = np.swapaxes(group, 0, 1).reshape(4, 36)
        assert np.allclose(matrix, gains["transposed"] * padded_identity(4, 36))
    # the grouped conv reads independent inputs: about sqrt(D_out / D_in) = 1/3, a little
    # more because zero padding lowers the output
    assert 1 / 3 <= gains["grouped"] < 0.4
    # each gain keeps its conv's output variance its input's, measured: the depthwise box
    # filter reads neighbours that the patch pattern before it correlates (its gain is lower)
    runs = [_run(new, {"x": np.random.default_rng(i).standard_normal((2, 8, 12, 12)).astype(
        np.float32)}, extra=["a", "b"]) for i in range(128)]
    var = {k: float(np.concatenate([r[k] for r in runs]).var()) for k in ("a", "b")}
    assert 0.95 < var["a"] < 1.05 and 0.9 < var["b"] / var["a"] < 1.1, var



def test_patch_maintain_transposed_convolution_keeps_its_correlated_input_variance():
    """The ConvTranspose's gain is computed from its predicted output, which reads the
    correlation the depthwise box filter gives its input (its patch pattern sums 9 correlated
    neighbours): measured 5x its input's variance when the rule took the taps as independent."""
    new, _, _ = _idinit(_conv_stack(), idinit_conv="patch")
    runs = [_run(new, {"x": np.random.default_rng(i).standard_normal((2, 8, 12, 12)).astype(
        np.float32)}, extra=["b"]) for i in range(128)]
    var = {k: float(np.concatenate([r[k] for r in runs]).var()) for k in ("b", "y")}
    assert 0.9 < var["y"] / var["b"] < 1.1, var

# --- residual networks -------------------------------------------------------------------------


def _to_double(model):
    m = onnx.ModelProto.FromString(model.SerializeToString())
    for t in m.graph.initializer:
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))
    for v in list(m.graph.input) + list(m.graph.output):
        v.type.tensor_type.elem_type = TensorProto.DOUBLE
    return m


def _loss(model64, x, labels, weight=None, value=None):
    """Softmax cross-entropy of the logits, in float64 (onnx's reference evaluator)."""
    from onnx.reference import ReferenceEvaluator

    if weight is not None:
        model64 = onnx.ModelProto.FromString(model64.SerializeToString())
        for t in model64.graph.initializer:
            if t.name == weight:
                t.CopyFrom(numpy_helper.from_array(value, weight))
    logits = ReferenceEvaluator(model64).run(None, {model64.graph.input[0].name: x})[0]
    logits = logits - logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def _directional_derivative(model64, x, labels, weight, direction, h):
    w0 = numpy_helper.to_array(next(t for t in model64.graph.initializer if t.name == weight))
    plus = _loss(model64, x, labels, weight, w0 + h * direction)
    minus = _loss(model64, x, labels, weight, w0 - h * direction)
    return (plus - minus) / (2 * h)


def _check_residual_network(model, image, batch=8, conv="patch"):
    """Identity per block, variance per block, and measured numbers for the report."""
    new, p, graph = _idinit(model, batch_size=batch, idinit_conv=conv)
    blocks = residual_blocks(graph)
    assert p.report["residual_blocks"] == [b.to_dict() for b in blocks]
    x = np.random.default_rng(0).standard_normal((batch, 3, image, image)).astype(np.float32)
    tensors = sorted({t for b in blocks for t in (b.input, b.skip.tensor, b.output)})
    values = _run(new, {graph.input_names[0]: x}, extra=tensors)
    errors = []
    for b in blocks:
        skip, out, inp = values[b.skip.tensor], values[b.output], values[b.input]
        errors.append(float(np.linalg.norm(out - skip) / np.linalg.norm(skip)))
        if b.identity_skip:
            assert np.array_equal(skip, inp)
        else:  # strided 1x1 padded identity: output channel c copies input channel c mod C_in
            (proj,) = b.skip.parametric
            stride = next(a.ints[0] for a in graph.node(proj).attribute if a.name == "strides")
            channels = np.arange(skip.shape[1]) % inp.shape[1]
            assert np.allclose(skip, inp[:, channels, ::stride, ::stride], rtol=1e-6, atol=1e-7)
    assert max(errors) < 1e-5
    new_graph = load(new, batch_size=batch)
    stats = measure(new_graph, {graph.input_names[0]: x}, device="cpu")
    ratios = [stats[b.output][1] / stats[b.input][1] for b in blocks]
    assert all(0.5 <= r <= 2 for r in ratios)
    drift = stats[blocks[-1].output][1] / stats[blocks[0].input][1]
    assert 0.5 <= drift <= 2
    return new, blocks, errors, ratios


@pytest.mark.parametrize("conv", ["patch", "dirac"])
def test_resnet20_blocks_are_identities_with_variance_kept(conv):
    model = resnet20_nobn(image=16)
    new, blocks, _, _ = _check_residual_network(model, 16, conv=conv)
    assert len(blocks) == 9 and sum(not b.identity_skip for b in blocks) == 2
    w = _weights(new)
    for b in blocks:  # the branch end holds the zero-preserving pattern, in every layout
        end = w[f"{b.branch_end}.weight"]
        if conv == "patch":
            assert np.array_equal(end.reshape(end.shape[0], -1),
                                  zero_preserving(end.shape[0], end[0].size, 1e-6)
                                  .astype(np.float32))
        assert np.abs(end).max() == np.float32(1e-6)
        assert np.all(w[f"{b.branch_end}.bias"] == 0)


def test_resnet20_gradient_reaches_the_branches():
    """Central differences of the cross-entropy (float64) along a random direction: the
    branch-end weights and the first branch layers both have a non-zero gradient. With the
    branch end set to exactly zero instead, the first layer's gradient vanishes (dead branch):
    that is what the eps entries are for."""
    model = resnet20_nobn(blocks_per_stage=1, image=8)
    new, _, graph = _idinit(model, batch_size=4)
    model64 = _to_double(new)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 8, 8))
    labels = rng.integers(0, 10, 4)
    blocks = residual_blocks(graph)
    assert len(blocks) == 3
    for b in blocks:
        end, first = f"{b.branch_end}.weight", f"{b.branch[0]}.weight"
        shape = numpy_helper.to_array(next(t for t in new.graph.initializer if t.name == end)).shape
        g_end = _directional_derivative(model64, x, labels, end, rng.standard_normal(shape), 1e-3)
        assert abs(g_end) > 1e-4
        shape = numpy_helper.to_array(next(t for t in new.graph.initializer if t.name == first)).shape
        direction = rng.standard_normal(shape)
        # small steps: the ReLUs' kinks must not fall inside the difference
        g_first = _directional_derivative(model64, x, labels, first, direction, 2e-5)
        g_half = _directional_derivative(model64, x, labels, first, direction, 1e-5)
        assert g_first != 0 and g_first == pytest.approx(g_half, rel=1e-2)  # a derivative, not noise
        dead = onnx.ModelProto.FromString(model64.SerializeToString())
        for t in dead.graph.initializer:
            if t.name == end:
                t.CopyFrom(numpy_helper.from_array(np.zeros(t.dims), end))
        assert _directional_derivative(dead, x, labels, first, direction, 2e-5) == 0


def test_resnet20_sample_blocks_are_identities():
    model = onnx.load(sample("resnet20_nobn"))
    shape = load(model).input_shapes
    image = next(iter(shape.values()))[-1]
    _, blocks, errors, ratios = _check_residual_network(model, image)
    print(f"sample: relative errors up to {max(errors):.3g}, variance ratios {min(ratios):.3g}..{max(ratios):.3g}")
    assert len(blocks) == 9


def test_registered_with_cli_options():
    plan_fn, options = METHODS["idinit"]
    assert plan_fn is plan and options is IDInitOptions
    assert IDInitOptions().idinit_tau == 1.0 and IDInitOptions().idinit_eps == 1e-6


def test_idinit_then_autoinit_keeps_the_patterns():
    """``--method idinit,autoinit``: autoinit rescales the identity patterns, so every weight
    of the result is a positive multiple of idinit's, and outputs reach the target variance."""
    from onnxinit.rescale import rescale

    model = resnet20_nobn(blocks_per_stage=1, image=8)
    ided, _, _ = _idinit(model)
    result = rescale(model, "idinit,autoinit", write=False)
    before, after = _weights(ided), _weights(result.model)
    for name, w in before.items():
        if name.endswith(".weight"):
            scale = np.linalg.norm(after[name]) / np.linalg.norm(w)
            assert scale > 0 and np.allclose(after[name], scale * w, rtol=1e-5, atol=1e-12)
    assert result.outputs_var_after["logits"] == pytest.approx(1.0, rel=0.05)
