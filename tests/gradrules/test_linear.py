"""Backward rules of Gemm, MatMul and Conv against the autodiff's measured gradients."""

from __future__ import annotations

import numpy as np
from onnx import helper

from tests.gradrules.oracle import array, assert_within, head, image_model, ratios, weight
from tests.models import mlp


def test_gemm_mlp_gradients_match_the_autodiff():
    found = ratios(mlp([64, 128, 128, 10], activation="Relu", seed=1), batch_size=32)
    assert len(found) == 6  # x, three Gemm outputs, two Relu outputs
    assert_within(found, 0.15)


def _strided_stack(size: int):
    """Conv 3->16 (stride 2, pad 1, bias), Relu, Conv 16->16 (pad 1), Relu, the head."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1],
                              strides=[2, 2], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2")]
    inits = [weight("w1", (16, 3, 3, 3), rng), array("b1", rng.standard_normal(16) * 0.1),
             weight("w2", (16, 16, 3, 3), rng)]
    head("r2", 16, 10, rng, nodes, inits)
    return image_model(nodes, inits, (3, size, size), 10)


def test_conv_with_padding_and_stride_matches_the_autodiff():
    """Zero padding sends fewer taps back to the border; a strided Conv leaves gaps."""
    assert_within(ratios(_strided_stack(6), batch_size=16), 0.2)


def test_a_conv_on_a_1x1_map_sends_back_only_its_centre_tap():
    """A 3x3 Conv with padding 1 on a 1x1 map: the eight outer taps see only padding, so
    the input gradient is 1/9 of what all taps would give; the rule must see it."""
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1")]
    inits = [weight("w1", (32, 32, 3, 3), rng)]
    head("r1", 32, 10, rng, nodes, inits)
    found = ratios(image_model(nodes, inits, (32, 1, 1), 10), batch_size=16)
    assert_within(found, 0.15)


def test_a_map_too_large_to_map_per_position_matches_the_autodiff(monkeypatch):
    """Above DENSE_POSITIONS the Conv rule describes positions by the taps reaching them and
    leaves the output gradient's spatial profile out: on a 32x32 map (the limit lowered to
    reach it) still within 10% of the measured gradients, as the per-position map is."""
    import onnxinit.gradrules.linear as linear

    monkeypatch.setattr(linear, "DENSE_POSITIONS", 0)
    assert_within(ratios(_strided_stack(32), batch_size=16), 0.1)


def test_backward_of_a_huge_map_stays_in_bounded_memory(tmp_path):
    """A Conv on a 1x3x30000x30000 input (10.8 GB as float32): the backward analysis runs in a
    process limited to 3 GB of address space (it needed 7 GB, and `check` was killed at 4000x4000
    taking 4.3 GB before the rule worked per set of taps)."""
    import subprocess
    import sys

    import onnx

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    model = image_model(nodes, [weight("w", (4, 3, 3, 3), rng)], (3, 30000, 30000), 10,
                        name="y")
    model.graph.output[0].type.tensor_type.ClearField("shape")
    path = tmp_path / "huge.onnx"
    onnx.save(model, path)
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
        "from onnxinit import analyze\n"
        f"a = analyze({str(path)!r}, batch_size=1, backward=True)\n"
        "assert not a.backward.warnings, a.backward.warnings\n"
        "print(a.backward.tensors['x'].var)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split()[-1]) > 0


def test_bias_gradient_through_a_1x1_conv_on_a_2x2_map():
    """dbias = sum over the batch and positions of dy, variance N S^2 u with u the variance of
    a sample's spatial mean. A 1x1 Conv maps dy's u to ``sum W^2 u``; the positions of a
    dense head's gradient are independent (u = Var / 4 here), and counting the independent
    part twice gave 0.44 instead of 0.25 of Var: the bias gradient 1.39x the autodiff's."""
    from onnxinit import analyze

    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
             helper.make_node("Flatten", ["c2"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1, name="fc")]
    inits = [weight("w1", (32, 16, 1, 1), rng), array("b1", np.zeros(32)),
             weight("w2", (32, 32, 1, 1), rng), weight("fc_w", (10, 128), rng, scale=128**-0.5),
             array("fc_b", np.zeros(10))]
    analysis = analyze(image_model(nodes, inits, (16, 2, 2), 10), batch_size=8, backward=True,
                       measure=True, gradient_batches=32)
    bias = next(p for p in analysis.backward.parameters if p.name == "b1")
    assert abs(bias.grad_var / bias.measured_grad_var - 1) < 0.10, bias.grad_var / bias.measured_grad_var
