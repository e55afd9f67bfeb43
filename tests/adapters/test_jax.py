"""The JAX adapter on a Flax-style parameter pytree and a flat dict (skipped without jax)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxinit.rescale import rescale
from onnxinit.weights import MappingError

from .onnx_mlp import dense_mlp
from .torch_roundtrip import ort_outputs

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
from onnxinit.adapters.jax import apply_to, load_into, path_name

SIZES = [(8, 16), (16, 16), (16, 4)]


def _params(seed=0):
    """What ``flax.linen.Dense`` creates: lecun-normal kernels [in, out], zero biases."""
    keys = jax.random.split(jax.random.PRNGKey(seed), len(SIZES))
    return {"params": {f"Dense_{i}": {
        "kernel": jax.random.normal(key, (d_in, d_out)) / np.sqrt(d_in),
        "bias": jnp.zeros((d_out,))} for i, (key, (d_in, d_out)) in enumerate(zip(keys, SIZES))}}


def _forward(params, x):
    layers = params["params"]
    for i in range(len(SIZES)):
        x = x @ layers[f"Dense_{i}"]["kernel"] + layers[f"Dense_{i}"]["bias"]
        if i + 1 < len(SIZES):
            x = jnp.tanh(x)
    return x


def _export(params, path):
    layers = [(np.asarray(p["kernel"]), np.asarray(p["bias"])) for p in params["params"].values()]
    onnx.save(dense_mlp(layers), str(path))
    return path


def test_pytree_round_trip_matches_onnxruntime(tmp_path):
    params = _params()
    original = _export(params, tmp_path / "mlp.onnx")
    rescaled = rescale(original, "autoinit", output=tmp_path / "mlp.r.onnx").output
    new, report = apply_to(params, rescaled, original)
    assert report.unmapped == [] and report.missing == [] and report.transposed == []
    assert report.mapped["StatefulPartitionedCall/MatMul_0/ReadVariableOp:0"] == \
        "params/Dense_0/kernel"
    assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(params)
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(_forward(new, x)), ort_outputs(rescaled, {"x": x}),
                               rtol=1e-4, atol=1e-4)
    assert not np.allclose(np.asarray(_forward(new, x)), np.asarray(_forward(params, x)))
    # and the input pytree is untouched (JAX arrays are immutable)
    assert np.array_equal(params["params"]["Dense_0"]["kernel"],
                          _params()["params"]["Dense_0"]["kernel"])


def test_flat_dict_in_place_and_mismatch_refused(tmp_path):
    params = _params(1)
    original = _export(params, tmp_path / "mlp.onnx")
    # keep_bias: without the original, replaced tensors could only map by name
    rescaled = rescale(original, "autoinit", output=tmp_path / "mlp.r.onnx",
                       keep_bias=True).output
    flat = {f"{layer}.{kind}": np.asarray(v) for layer, d in params["params"].items()
            for kind, v in d.items()}
    report = load_into(flat, rescaled)  # no original: the scales recorded by rescale are used
    assert report.unmapped == [] and report.missing == []
    assert isinstance(flat["Dense_0.kernel"], np.ndarray)
    expected = {t.name: onnx.numpy_helper.to_array(t)
                for t in onnx.load(str(rescaled)).graph.initializer}
    np.testing.assert_array_equal(
        flat["Dense_2.kernel"], expected["StatefulPartitionedCall/MatMul_2/ReadVariableOp:0"])

    other = {path_name(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(_params(2))}
    before = {k: v.copy() for k, v in other.items()}
    with pytest.raises(MappingError, match="nothing was loaded"):
        load_into(other, rescaled, original)
    assert all(np.array_equal(before[k], other[k]) for k in other)


def test_jax2onnx_export_round_trip(tmp_path):
    """A real export: jax2onnx writes Gemm weights as ``const_N`` and biases as [1, C]."""
    jax2onnx = pytest.importorskip("jax2onnx")
    params = _params(3)
    params["params"]["Dense_1"]["bias"] = 0.1 * jax.random.normal(jax.random.PRNGKey(9), (16,))
    model = jax2onnx.to_onnx(lambda x: _forward(params, x), [(4, 8)])
    model.ir_version = min(model.ir_version, 10)
    original = tmp_path / "jax.onnx"
    onnx.save(model, str(original))
    rescaled = rescale(original, "autoinit", output=tmp_path / "jax.r.onnx").output
    new, report = apply_to(params, rescaled, original)
    assert report.missing == []
    assert set(report.mapped.values()) == {
        f"params/Dense_{i}/{kind}" for i in range(3) for kind in ("kernel", "bias")}
    assert report.reshaped  # biases written as [1, C]
    # anything left unmapped is an exporter constant the rescale did not change
    inits = {t.name: t for t in onnx.load(str(original)).graph.initializer}
    after = {t.name: t for t in onnx.load(str(rescaled)).graph.initializer}
    assert all(inits[n].SerializeToString() == after[n].SerializeToString()
               for n in report.unmapped)
    input_name = model.graph.input[0].name
    x = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(_forward(new, x)), ort_outputs(rescaled, {input_name: x}),
                               rtol=1e-4, atol=1e-4)
