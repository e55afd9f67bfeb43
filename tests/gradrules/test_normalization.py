"""Backward rule of BatchNormalization (batch statistics) against the autodiff."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from onnxinit import analyze
from tests.gradrules.oracle import array, assert_within, head, image_model, ratios, weight
from tests.models import make_model


def _conv_bn_relu(size: int, rng):
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("BatchNormalization", ["c1", "g1", "b1", "m1", "v1"], ["n1"],
                              name="bn1"),
             helper.make_node("Relu", ["n1"], ["r1"], name="relu1")]
    inits = [weight("w1", (16, 8, 3, 3), rng), array("g1", np.ones(16)), array("b1", np.zeros(16)),
             array("m1", np.zeros(16)), array("v1", np.ones(16))]
    head("r1", 16, 10, rng, nodes, inits)
    return image_model(nodes, inits, (8, size, size), 10)


def test_batch_norm_on_a_1x1_map_removes_the_batch_mean_and_x_hat_components():
    """On a 1x1 map at batch 8 the projection removes 2/8 of the gradient's variance; a rule
    that ignores the batch statistics is 33% high."""
    found = ratios(_conv_bn_relu(1, np.random.default_rng(0)), batch_size=8, batches=16)
    assert_within(found, 0.15)
def test_batch_norm_on_a_4x4_map():
    """A gradient broadcast by the global pool is the same at every position of a sample:
    the batch mean removes 1/N of it, not 1/(N S)."""
    found = ratios(_conv_bn_relu(4, np.random.default_rng(1)), batch_size=8, batches=16)
    assert_within(found, 0.15)



def _conv_norm_relu(norm: str, size: int, rng, groups: int = 4):
    """Conv -> InstanceNorm or GroupNorm (opset 21: per-channel scale) -> ReLU -> Conv -> the
    pooled head."""
    if norm == "instance":
        norm_node = helper.make_node("InstanceNormalization", ["c1", "g1", "b1"], ["n1"],
                                     name="norm1")
    else:
        norm_node = helper.make_node("GroupNormalization", ["c1", "g1", "b1"], ["n1"],
                                     num_groups=groups, name="norm1")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             norm_node,
             helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2")]
    inits = [weight("w1", (16, 8, 3, 3), rng), array("g1", np.ones(16)),
             array("b1", np.zeros(16)), weight("w2", (16, 16, 3, 3), rng)]
    head("r2", 16, 10, rng, nodes, inits)
    model = make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits,
        opset=21)
    # onnx's shape inference does not type a GroupNormalization output: declare it
    model.graph.value_info.append(
        helper.make_tensor_value_info("n1", TensorProto.FLOAT, ["N", 16, size, size]))
    return model


@pytest.mark.parametrize("size", [2, 4])
def test_group_norm_over_groups_of_four_channels(size):
    found = ratios(_conv_norm_relu("group", size, np.random.default_rng(4)), batch_size=8,
                   batches=16)
    assert_within(found, 0.15)


@pytest.mark.parametrize("size", [2, pytest.param(4, marks=pytest.mark.xfail(
    strict=True, reason="x 1.23, c1 1.15 at 4x4: dy and x_hat are both correlated between "
    "neighbouring positions, so the x_hat component removes more than E[dy^2]/n (measured kept "
    "share 0.57 against 0.69); the gradient's spatial covariance is not tracked"))])
def test_instance_norm_removes_each_sample_channels_spatial_mean(size):
    """The autodiff has no InstanceNormalization: measured on the same network written as
    GroupNormalization with one channel per group, predicted on the InstanceNormalization one.
    A rule that passes the gradient through is 1.5x high at the norm's input."""
    instance = _conv_norm_relu("instance", size, np.random.default_rng(5))
    grouped = _conv_norm_relu("group", size, np.random.default_rng(5), groups=16)
    predicted = analyze(instance, batch_size=8, backward=True).backward
    assert not predicted.warnings, predicted.warnings
    measured = analyze(grouped, batch_size=8, backward=True, measure=True,
                       gradient_batches=16).backward
    found = {name: predicted.tensors[name].var / g.measured_var
             for name, g in measured.tensors.items() if g.measured_var}
    assert "c1" in found
    assert_within(found, 0.15)



def _residual_bn_block(size: int, rng):
    """relu(r0 + BN(conv(r0))) with r0 a ReLU output: the sum is mostly positive, so the
    ReLU's gate passes most of a pooled gradient and keeps it alike across positions."""
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1], name="conv0"),
             helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
             helper.make_node("Conv", ["r0", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("BatchNormalization", ["c1", "g1", "b1", "m1", "v1"], ["n1"],
                              name="bn1"),
             helper.make_node("Add", ["r0", "n1"], ["s1"], name="add1"),
             helper.make_node("Relu", ["s1"], ["r1"], name="relu1")]
    inits = [weight("w0", (16, 8, 3, 3), rng, scale=3.0), weight("w1", (16, 16, 3, 3), rng),
             array("g1", np.ones(16)), array("b1", np.zeros(16)), array("m1", np.zeros(16)),
             array("v1", np.ones(16))]
    head("r1", 16, 10, rng, nodes, inits)
    return image_model(nodes, inits, (8, size, size), 10)


def test_batch_norm_at_batch_one_on_a_2x2_map():
    """At batch 1 on a 2x2 map a pooled gradient through a mostly-open ReLU is nearly the same
    at each position: the x_hat component is taken from what the sample mean left,
    (Var - u) / (M - 1), not E[dy^2] / M (which removed more than all of it: the gradient into
    the BN predicted 0, a false ONNXINIT005 on RegNet exported at batch 1)."""
    found = ratios(_residual_bn_block(2, np.random.default_rng(2)), batch_size=1, batches=256)
    assert_within(found, 0.3)


def _two_batch_norms_on_1x1_maps(rng, channels: int = 64):
    """x -> Conv -> BN -> ReLU -> Conv -> BN -> ReLU -> pool -> Gemm on 1x1 maps: M = 8 values
    per channel at batch 8. The second BN's input is a Conv of relu(x_hat) and the first BN's
    output gradient is relu' times a gradient whose batch mean the second BN removed."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
             helper.make_node("BatchNormalization", ["c1", "g1", "b1", "m1", "v1"], ["n1"],
                              name="bn1"),
             helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
             helper.make_node("BatchNormalization", ["c2", "g2", "b2", "m2", "v2"], ["n2"],
                              name="bn2"),
             helper.make_node("Relu", ["n2"], ["r2"], name="relu2")]
    inits = [weight("w1", (channels, 256, 1, 1), rng),
             weight("w2", (channels, channels, 1, 1), rng)]
    for k in (1, 2):
        inits += [array(f"g{k}", np.ones(channels)), array(f"b{k}", np.zeros(channels)),
                  array(f"m{k}", np.zeros(channels)), array(f"v{k}", np.ones(channels))]
    head("r2", channels, 10, rng, nodes, inits)
    return image_model(nodes, inits, (256, 1, 1), 10)


@pytest.mark.parametrize("seed", [7, 8])
def test_batch_norm_steps_at_eight_values_per_channel(seed):
    """The oracle: the autodiff over 64 batches. Each BN's step, the predicted/measured ratio
    at its input over that at its output, within 7%. The second BN: E[1/sigma_b^2] is
    (M-1)/(M-3) over the within-batch variance P (1 - r/M), r = 0.03 (its input's batch mean
    hardly moves after relu(x_hat)), and relu(x_hat) has 3.5% less variance than relu of a
    Gaussian; M/((M-3) P) was 14-16% high. The first BN keeps 0.84 of E[dy^2], not 0.75:
    dy = relu' g with g of zero batch mean loses 0.50 and 0.68 of E[dy^2]/M, not 1 and 1
    (10-13% low before)."""
    found = ratios(_two_batch_norms_on_1x1_maps(np.random.default_rng(seed)), batch_size=8,
                   batches=64)
    steps = {"bn1": found["c1"] / found["n1"], "bn2": found["c2"] / found["n2"]}
    assert_within(steps, 0.07)


@pytest.mark.parametrize("count", [5, 8, 32])
def test_relu_of_batch_standardized_values_against_simulation(count):
    """Var[relu(0.3 + 1.2 x_hat)] for x_hat standardized over its batch of ``count`` values:
    the sphere law against 200k simulated batches (8 values: 3.5% below the Gaussian's)."""
    from onnxinit.gradrules.batch_share import sphere_variance

    rng = np.random.default_rng(count)
    x = rng.standard_normal((200_000 // count * 8, count))
    x_hat = (x - x.mean(axis=1, keepdims=True)) / x.std(axis=1, keepdims=True)
    simulated = np.maximum(0.3 + 1.2 * x_hat, 0.0).var()
    assert abs(sphere_variance(0.3, 1.2, count) / simulated - 1) < 0.006
