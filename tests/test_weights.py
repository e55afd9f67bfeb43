"""Name mapping of ONNX initializers onto framework parameters (numpy only, no framework)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.rescale import rescale
from onnxinit.weights import (
    MappingError,
    WeightSource,
    identity_aliases,
    load_plan,
    map_weights,
    normalize_name,
    weight_source,
)
from onnxinit.plan_record import read_plan_record

from .models import make_model, mlp

RNG = np.random.default_rng(0)


def _randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def test_name_value_and_transposed_value():
    w1, w2, b = _randn(6, 4), _randn(3, 6), _randn(6)
    onnx_values = {"fc1.bias": b, "onnx::MatMul_12": w1.T.copy(), "onnx::MatMul_13": w2.T.copy()}
    params = {"fc1.weight": w1, "fc1.bias": b, "fc2.weight": w2}
    report = map_weights(onnx_values, params)
    assert report.mapped == {"fc1.bias": "fc1.bias", "onnx::MatMul_12": "fc1.weight",
                             "onnx::MatMul_13": "fc2.weight"}
    assert report.transposed == ["onnx::MatMul_12", "onnx::MatMul_13"]
    assert report.unmapped == [] and report.missing == []
    values = load_plan(report, WeightSource(onnx_values, onnx_values), params)
    np.testing.assert_array_equal(values["fc1.weight"], w1)


def test_square_matrix_matched_transposed():
    w = _randn(5, 5)
    report = map_weights({"onnx::MatMul_3": w.T.copy()}, {"layer.weight": w})
    assert report.mapped == {"onnx::MatMul_3": "layer.weight"}
    assert report.transposed == ["onnx::MatMul_3"]


@pytest.mark.parametrize("onnx_name, param, how", [
    ("module.encoder.fc.weight", "encoder.fc.weight", "normalized name"),
    ("_orig_mod.fc.weight", "fc.weight", "normalized name"),
    ("params/Dense_0/kernel", "Dense_0/kernel", "normalized name"),
    ("p_layer1_conv_weight", "layer1.conv.weight", "normalized name"),
    ("sequential/dense/kernel:0", "dense.kernel", "name suffix"),
    ("encoder.fc.weight", "net.wrapped.encoder.fc.weight", "name suffix"),
])
def test_normalized_names(onnx_name, param, how):
    if how == "normalized name":
        assert normalize_name(onnx_name) == normalize_name(param)
    zeros = np.zeros((3, 4), np.float32)  # a constant value: only the name can map it
    params = {param: zeros, "other.weight": np.ones((3, 4), np.float32)}
    report = map_weights({onnx_name: zeros}, params)
    assert report.mapped == {onnx_name: param} and report.how[onnx_name] == how
    assert report.missing == ["other.weight"]


def test_a_suffix_shared_by_several_parameters_maps_nothing():
    zeros = np.zeros(3, np.float32)
    report = map_weights({"weight": zeros}, {"a.weight": zeros, "b.weight": zeros})
    assert report.mapped == {} and report.unmapped == ["weight"]
    assert report.ambiguous == {"weight": ["a.weight", "b.weight"]}


def test_unmapped_and_missing_are_reported_and_buffers_are_optional():
    onnx_values = {"a": _randn(3), "stray": _randn(7)}
    params = {"a": onnx_values["a"], "b": _randn(2), "bn.running_mean": np.zeros(3, np.float32)}
    report = map_weights(onnx_values, params, buffers={"bn.running_mean"})
    assert report.unmapped == ["stray"]
    assert report.missing == ["b"]  # the buffer is not missing: it was never an initializer


def test_equal_constant_tensors_are_interchangeable_only_when_the_new_values_agree():
    zeros = np.zeros(4, np.float32)
    params = {"l1.bias": zeros, "l2.bias": zeros.copy()}
    ref = {"t1": zeros, "t2": zeros}
    same = WeightSource(new={"t1": zeros, "t2": zeros}, reference=ref)
    report = map_weights(same, params)
    assert sorted(report.mapped.values()) == ["l1.bias", "l2.bias"]
    assert all(h == "value (interchangeable)" for h in report.how.values())

    differ = WeightSource(new={"t1": zeros, "t2": np.ones(4, np.float32)}, reference=ref)
    report = map_weights(differ, params)
    assert report.mapped == {} and report.unmapped == ["t1", "t2"]
    assert report.ambiguous == {"t1": ["l1.bias", "l2.bias"], "t2": ["l1.bias", "l2.bias"]}
    with pytest.raises(MappingError, match="map to no parameter"):
        load_plan(report, differ, params)


def test_mismatched_shapes_are_refused_with_the_report():
    onnx_values = {"fc.weight": _randn(4, 3), "fc.bias": _randn(4)}
    params = {"fc.weight": _randn(5, 3), "fc.bias": onnx_values["fc.bias"]}
    report = map_weights(onnx_values, params)
    assert report.mismatched == {"fc.weight": "shape (4, 3), parameter (5, 3)"}
    with pytest.raises(MappingError, match="shapes differ") as info:
        load_plan(report, WeightSource(onnx_values, onnx_values), params)
    assert info.value.report is report


def test_most_parameters_missing_is_refused():
    w = _randn(3, 3)
    params = {"a": w, **{f"p{i}": _randn(2, 2) for i in range(5)}}
    report = map_weights({"a": w}, params)
    with pytest.raises(MappingError, match="only 1 of 6 parameters found"):
        load_plan(report, WeightSource({"a": w}, {"a": w}), params)


def test_tied_weight_maps_to_one_parameter_and_conflicts_are_refused():
    """A tied embedding read as itself (Gather) and as a transposed copy (folded MatMul)."""
    emb = _randn(10, 4)
    params = {"wte.weight": emb}
    original = {"wte.weight": emb, "onnx::MatMul_9": emb.T.copy()}
    report = map_weights(WeightSource(new=original, reference=original), params)
    assert report.mapped == {"wte.weight": "wte.weight", "onnx::MatMul_9": "wte.weight"}
    np.testing.assert_array_equal(
        load_plan(report, WeightSource(original, original), params)["wte.weight"], emb)

    rescaled = {"wte.weight": emb, "onnx::MatMul_9": emb.T * np.float32(0.5)}
    source = WeightSource(new=rescaled, reference=original)
    report = map_weights(source, params)
    with pytest.raises(MappingError, match="tied parameters would receive different values"):
        load_plan(report, source, params)
    assert report.conflicts == {"wte.weight": ["wte.weight", "onnx::MatMul_9"]}


def _conv_bn_values(eps=1e-5):
    w = _randn(8, 3, 3, 3)
    gamma, beta = 1 + 0.1 * _randn(8), 0.1 * _randn(8)
    mean, var = 0.1 * _randn(8), 1 + 0.1 * np.abs(_randn(8))
    k = gamma / np.sqrt(var + eps)
    params = {"conv.weight": w, "bn.weight": gamma, "bn.bias": beta, "bn.running_mean": mean,
              "bn.running_var": var, "fc.weight": _randn(2, 8)}
    folded = {"onnx::Conv_7": (w * k[:, None, None, None]).astype(np.float32),
              "onnx::Conv_8": (beta - mean * k).astype(np.float32),
              "fc.weight": params["fc.weight"]}
    return params, folded


def test_folded_batchnorm_is_reported_and_refused():
    params, folded = _conv_bn_values()
    graph_model = make_model(
        [helper.make_node("Conv", ["x", "onnx::Conv_7", "onnx::Conv_8"], ["y"], name="conv")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 3, 3])],
        [numpy_helper.from_array(v, n) for n, v in folded.items() if n != "fc.weight"],
    )
    source = WeightSource(new=folded, reference=folded, model=graph_model)
    buffers = {"bn.running_mean", "bn.running_var"}
    report = map_weights(source, params, buffers=buffers)
    assert report.folded == ["onnx::Conv_7", "onnx::Conv_8"]
    assert report.folded_into["onnx::Conv_7"] == [
        "conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"]
    assert report.unmapped == [] and report.mapped == {"fc.weight": "fc.weight"}
    assert report.missing == ["conv.weight", "bn.weight", "bn.bias"]
    with pytest.raises(MappingError, match="eval-mode export"):
        load_plan(report, source, params, buffers=buffers)


def test_a_scaled_conv_without_batchnorm_is_not_called_folded():
    params, folded = _conv_bn_values()
    params["bn.weight"] = params["bn.weight"] * 3  # no BatchNorm explains the factor
    report = map_weights(folded, params)
    assert report.folded == [] and "onnx::Conv_7" in report.unmapped


def test_identity_aliases_map_deduplicated_initializers():
    """torch's exporter keeps one of several equal initializers and reads it via Identity."""
    zeros = np.zeros(3, np.float32)
    model = make_model(
        [helper.make_node("Identity", ["a.bias"], ["b.bias"]),
         helper.make_node("Add", ["x", "a.bias"], ["s"]),
         helper.make_node("Add", ["s", "b.bias"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        [numpy_helper.from_array(zeros, "a.bias")],
    )
    assert identity_aliases(model) == {"b.bias": "a.bias"}
    params = {"a.bias": zeros, "b.bias": zeros.copy()}
    report = map_weights(weight_source(model), params)
    assert report.mapped == {"a.bias": "a.bias", "b.bias": "b.bias"}
    assert report.aliases == {"b.bias": "a.bias"}
    assert report.unmapped == [] and report.missing == []


def _torch_layout_params(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The model's Gemm weights and biases under framework-style names (values unchanged)."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {f"layers.{n[1:]}.{'weight' if n[0] == 'w' else 'bias'}": v for n, v in inits.items()}


def test_rescaled_model_maps_by_original_values_and_loads_rescaled_ones(tmp_path):
    model = mlp([8, 16, 16, 4], seed=3)
    src = tmp_path / "mlp.onnx"
    onnx.save(model, src)
    result = rescale(src, "autoinit", output=tmp_path / "mlp.autoinit.onnx")
    params = _torch_layout_params(model)

    source = weight_source(result.output, src)
    report = map_weights(source, params)
    assert report.unmapped == [] and report.missing == []
    assert set(report.how.values()) == {"value"}
    values = load_plan(report, source, params)
    rescaled = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    np.testing.assert_array_equal(values["layers.0.weight"], rescaled["w0"])
    np.testing.assert_array_equal(values["layers.2.bias"], rescaled["b2"])
    assert not np.array_equal(values["layers.0.weight"], params["layers.0.weight"])


def test_without_the_original_scaled_tensors_match_by_recorded_scale(tmp_path):
    model = mlp([8, 16, 4], seed=4)
    src = tmp_path / "mlp.onnx"
    onnx.save(model, src)
    out = rescale(src, "autoinit", output=tmp_path / "r.onnx", keep_bias=True).output
    record = read_plan_record(onnx.load(out))
    assert record["method"] == "autoinit" and set(record["scales"]) == {"w0", "w1"}
    params = _torch_layout_params(model)
    report = map_weights(weight_source(out), params)
    assert report.how == {"w0": "scaled value", "b0": "value", "w1": "scaled value",
                          "b1": "value"}

    # biases replaced by zeros, no original, no matching names: refused, nothing guessed
    out = rescale(src, "autoinit", output=tmp_path / "r2.onnx").output
    source = weight_source(out)
    report = map_weights(source, params)
    assert set(report.unmapped) == {"b0", "b1"}
    with pytest.raises(MappingError, match="2 rescaled tensor"):
        load_plan(report, source, params)


def test_plan_record_composes_over_two_rescales(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(mlp([6, 6, 6], seed=1), src)
    first = rescale(src, "autoinit", output=tmp_path / "a.onnx", keep_bias=True)
    second = rescale(first.output, "autoinit", output=tmp_path / "b.onnx", target_var=0.25,
                     keep_bias=True)
    record = read_plan_record(onnx.load(second.output))
    assert record["source"] == str(src) and record["method"] == "autoinit,autoinit"
    for name in ("w0", "w1"):
        expected = first.plan.changes[name].scale * second.plan.changes[name].scale
        assert record["scales"][name] == pytest.approx(expected, rel=1e-12)
    # tensors the plans did not touch stay byte-identical (the record only adds metadata)
    before = {t.name: t.SerializeToString() for t in onnx.load(src).graph.initializer}
    after = {t.name: t.SerializeToString() for t in onnx.load(second.output).graph.initializer}
    assert after["b0"] == before["b0"] and after["w0"] != before["w0"]


def test_the_core_and_the_adapters_package_import_no_framework():
    import subprocess
    import sys

    code = ("import sys, onnxinit, onnxinit.weights, onnxinit.adapters, onnxinit.cli; "
            "bad = [m for m in ('torch', 'jax', 'keras', 'tensorflow') if m in sys.modules]; "
            "assert not bad, bad")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr


def test_folded_batchnorm_with_keras_names():
    params, folded = _conv_bn_values(eps=1e-3)  # Keras's default epsilon
    rename = {"conv.weight": "conv2d/kernel", "bn.weight": "batch_normalization/gamma",
              "bn.bias": "batch_normalization/beta",
              "bn.running_mean": "batch_normalization/moving_mean",
              "bn.running_var": "batch_normalization/moving_variance"}
    params = {rename.get(k, k): v for k, v in params.items()}
    report = map_weights(folded, params)
    assert report.folded == ["onnx::Conv_7"]  # no graph given: the bias is not identified
    assert report.folded_into["onnx::Conv_7"][0] == "conv2d/kernel"


def test_original_given_as_a_weights_file(tmp_path):
    from onnxinit.weights import export_weights

    model = mlp([8, 16, 4], seed=6)
    src = tmp_path / "mlp.onnx"
    onnx.save(model, src)
    original_weights = export_weights(src, tmp_path / "orig.npz")
    out = rescale(src, "autoinit", output=tmp_path / "r.onnx").output
    params = _torch_layout_params(model)
    report = map_weights(weight_source(out, original_weights), params)
    assert report.unmapped == [] and set(report.how.values()) == {"value"}
