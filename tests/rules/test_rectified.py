"""ReLU of a Gaussian mixture (rules/rectified.py) against numpy Monte Carlo (float64, seeded):
the output's point mass at 0, mean and variance, and the next residual ReLU's moments, which
read the shape of the law and not only its moments."""

from __future__ import annotations

import numpy as np
import pytest

from onnxinit.rules.rectified import MAX_COMPONENTS, POSITIVE_BINS, relu_mixture

SAMPLES = 400_000


def _mixture(rng, k: int, channels: int = 4):
    w = rng.random((k, 1, channels))
    return w / w.sum(axis=0), rng.normal(0.0, 1.5, (k, 1, channels)), rng.random((k, 1, channels))


def _draw(mixture, rng) -> np.ndarray:
    """[SAMPLES, channels] samples of the mixture."""
    w, m, v = (a[:, 0] for a in mixture)
    out = np.empty((SAMPLES, w.shape[1]))
    for c in range(w.shape[1]):
        k = rng.choice(w.shape[0], p=w[:, c], size=SAMPLES)
        out[:, c] = m[k, c] + np.sqrt(v[k, c]) * rng.standard_normal(SAMPLES)
    return out


def _moments(mixture):
    w, m, v = mixture
    mean = (w * m).sum(axis=0)
    return mean.ravel(), ((w * (v + m * m)).sum(axis=0) - mean**2).ravel()


@pytest.mark.parametrize("k", [3, 12])
def test_relu_of_a_mixture_keeps_its_zero_and_moments(k):
    rng = np.random.default_rng(k)
    mixture = _mixture(rng, k)
    out = relu_mixture(mixture)
    assert out[0].shape[0] == min(POSITIVE_BINS * k + 1, MAX_COMPONENTS)
    y = np.maximum(_draw(mixture, rng), 0.0)
    mean, var = _moments(out)
    np.testing.assert_allclose(out[0][0].ravel(), (y == 0).mean(axis=0), atol=3e-3)
    np.testing.assert_allclose(mean, y.mean(axis=0), rtol=1e-2)
    np.testing.assert_allclose(var, y.var(axis=0), rtol=1e-2)


def test_next_residual_relu_sees_the_point_mass():
    """ReLU(ReLU(x) + b): the second ReLU's variance from the kept mixture within 2% of Monte
    Carlo (each positive part as one Gaussian); one Gaussian per component (the first ReLU's
    moments, as before) is up to 7.5% low here."""
    rng = np.random.default_rng(7)
    mixture = _mixture(rng, 4)
    shift, spread = 0.3, 0.25  # b ~ N(0.3, 0.25)
    z = np.maximum(np.maximum(_draw(mixture, rng), 0.0)
                   + shift + np.sqrt(spread) * rng.standard_normal((SAMPLES, 1)), 0.0)
    w, m, v = relu_mixture(mixture)
    _, var = _moments(relu_mixture((w, m + shift, v + spread)))
    np.testing.assert_allclose(var, z.var(axis=0), rtol=2.5e-2)


def test_a_residual_relu_stream_keeps_its_law_over_thirty_blocks():
    """``s_k = ReLU(s_{k-1} + g_k)``, g_k independent N(0, 1) (a BatchNorm ResNet's stream: the
    branch's BatchNorm output added to the skip): against onnxruntime, the stream's variance
    within 2% and its mean within 1% at every block. Each component's positive part as one
    Gaussian spilled below 0, so the next ReLU clipped too much: 0.83x of the variance by
    block 30 (torchvision ResNet-152 with BatchNorm: 0.86x by the end of its third stage); a
    stream whose channels share one law lost its mixture altogether (0.65x)."""
    from onnx import TensorProto, helper

    from onnxinit import analyze
    from onnxinit.runtime import make_session

    blocks, shape = 30, [2048, 4, 4, 4]
    nodes = [helper.make_node("Relu", ["x0"], ["s0"])]
    inputs = [helper.make_tensor_value_info("x0", TensorProto.FLOAT, shape)]
    for k in range(1, blocks + 1):
        inputs.append(helper.make_tensor_value_info(f"x{k}", TensorProto.FLOAT, shape))
        nodes += [helper.make_node("Add", [f"s{k - 1}", f"x{k}"], [f"a{k}"]),
                  helper.make_node("Relu", [f"a{k}"], [f"s{k}"])]
    outputs = [helper.make_tensor_value_info(f"s{k}", TensorProto.FLOAT, None)
               for k in range(blocks + 1)]
    model = helper.make_model(helper.make_graph(nodes, "stream", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    predicted = {t.name: t for t in analyze(model).tensors}
    rng = np.random.default_rng(0)
    feeds = {f"x{k}": rng.standard_normal(shape).astype(np.float32) for k in range(blocks + 1)}
    measured = make_session(model, device="cpu").run(None, feeds)
    for k, values in enumerate(measured):
        got = predicted[f"s{k}"]
        np.testing.assert_allclose(got.var, values.var(), rtol=0.02, err_msg=f"block {k}")
        np.testing.assert_allclose(got.mean, values.mean(), rtol=0.01, err_msg=f"block {k}")
