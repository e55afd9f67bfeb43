"""The Flax loop on real jax2onnx exports: a small CNN and a residual CNN, with and without
BatchNorm (inference mode), exported, ``rescale --method autoinit``, ``apply_to`` on the
variables (``params`` and ``batch_stats``), and Flax's output equals onnxruntime's on the
rescaled model. Skipped without flax/jax2onnx (failing instead with ``ONNXINIT_REQUIRE_JAX=1``).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxinit.rescale import rescale

from .frameworks import require
from .torch_roundtrip import ort_outputs

jax = require("jax")
nn = require("flax.linen", "jax")
jax2onnx = require("jax2onnx", "jax")
from onnxinit.adapters.jax import apply_to

SHAPE = (2, 8, 8, 3)


class SmallCnn(nn.Module):
    bn: bool

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(8, (3, 3), use_bias=not self.bn)(x)
        if self.bn:
            x = nn.BatchNorm(use_running_average=True)(x)
        x = nn.relu(x)
        x = nn.relu(nn.Conv(8, (3, 3), strides=2)(x))
        return nn.Dense(5)(x.reshape((x.shape[0], -1)))


class ResidualCnn(nn.Module):
    """A stem and two residual blocks (the second with a BatchNorm after the Add)."""

    bn: bool

    @nn.compact
    def __call__(self, x):
        def norm(y):
            return nn.BatchNorm(use_running_average=True)(y) if self.bn else y

        x = nn.relu(norm(nn.Conv(8, (3, 3), use_bias=not self.bn)(x)))
        for _ in range(2):
            y = nn.relu(norm(nn.Conv(8, (3, 3), use_bias=not self.bn)(x)))
            y = norm(nn.Conv(8, (3, 3), use_bias=not self.bn)(y))
            x = nn.relu(norm(x + y))
        return nn.Dense(4)(x.mean(axis=(1, 2)))


@pytest.mark.parametrize("bn", [False, True], ids=["nobn", "bn"])
@pytest.mark.parametrize("network", [SmallCnn, ResidualCnn])
def test_rescaled_jax2onnx_export_loads_and_matches_onnxruntime(tmp_path, network, bn):
    module = network(bn=bn)
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    variables = module.init(jax.random.PRNGKey(0), x)
    model = jax2onnx.to_onnx(lambda inp: module.apply(variables, inp), [SHAPE])
    model.ir_version = min(model.ir_version, 10)
    original = tmp_path / "flax.onnx"
    onnx.save(model, str(original))
    rescaled = rescale(original, "autoinit", output=tmp_path / "flax.r.onnx").output
    new, report = apply_to(variables, rescaled, original)
    assert report.unmapped == [] and report.missing == [], report.summary()
    assert report.folded == []  # jax2onnx keeps BatchNorm's four vectors: each maps by value
    expected = ort_outputs(rescaled, {model.graph.input[0].name: x})
    ours = np.asarray(module.apply(new, x))
    rel = float(np.max(np.abs(ours - expected)) / np.max(np.abs(expected)))
    print(f"flax-jax2onnx {network.__name__} bn={bn}: loads, rel. diff {rel:.1e}")
    assert rel <= 1e-5
    assert not np.allclose(ours, np.asarray(module.apply(variables, x)), rtol=1e-3)
