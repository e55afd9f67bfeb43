"""ONNXINIT005/006: gradients that vanish or explode from the last layer to the first, judged
on the predicted update-to-weight ratios of the backward analysis."""

from __future__ import annotations

import json
import math

import onnx
import pytest

from onnxinit import analyze, rescale
from onnxinit.check import EXPLODING_GRADIENT, VANISHING_GRADIENT, find, paths_of
from onnxinit.findings.gradient import depth_ratio, layer_gradients
from tests.cli import run
from tests.models import mlp
from tests.test_check import validate_sarif


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    """50-layer MLPs (Gemm, N(0, 1/fan_in) weights): sigmoid, ReLU, and ReLU rescaled by
    autoinit."""
    folder = tmp_path_factory.mktemp("deep")
    paths = {}
    for activation in ("Sigmoid", "Relu"):
        path = folder / f"{activation.lower()}50.onnx"
        onnx.save(mlp([64] * 51 + [10], activation=activation, seed=0), str(path))
        paths[activation.lower()] = path
    paths["relu_autoinit"] = folder / "relu50.autoinit.onnx"
    rescale(paths["relu"], "autoinit", output=paths["relu_autoinit"])
    return paths


def _ids(path, **options) -> list[str]:
    analysis = analyze(path, batch_size=32, backward=True)
    return [f.rule_id for f in find(analysis, **options)]


def test_vanishing_gradient_fires_on_a_50_layer_sigmoid_mlp(deep):
    assert VANISHING_GRADIENT in _ids(deep["sigmoid"])


def test_the_ratio_it_judges_is_the_measured_one(deep):
    """The first-to-last update ratio against the autodiff's (measured parameter gradients):
    the same order of magnitude across 30 orders of vanishing."""
    analysis = analyze(deep["sigmoid"], batch_size=32, backward=True, measure=True)
    layers = layer_gradients(analysis, paths_of(analysis))
    measured = {p.name: math.sqrt(p.measured_grad_var) / p.weight_rms
                for p in analysis.backward.parameters if p.role == "weight"}
    predicted = depth_ratio(layers)
    actual = measured[layers[0].weight] / measured[layers[-1].weight]
    assert predicted < 1e-20 and 0.3 < predicted / actual < 3


def test_relu_mlp_fires_and_its_autoinit_rescale_does_not(deep):
    assert VANISHING_GRADIENT in _ids(deep["relu"])
    ids = _ids(deep["relu_autoinit"])
    assert VANISHING_GRADIENT not in ids and EXPLODING_GRADIENT not in ids


def test_thresholds_are_options(deep):
    assert VANISHING_GRADIENT not in _ids(deep["relu"], min_gradient_ratio=1e-9)
    assert EXPLODING_GRADIENT in _ids(deep["relu_autoinit"], max_gradient_ratio=1.01)


@pytest.mark.parametrize("fmt", ["text", "json", "sarif", "github"])
def test_every_format_reports_it(deep, capsys, fmt):
    code, out, _ = run(["check", deep["sigmoid"], "--format", fmt], capsys)
    assert code == 1 and VANISHING_GRADIENT in out
    if fmt == "json":
        findings = json.loads(out)["models"][0]["findings"]
        assert any(f["rule_id"] == VANISHING_GRADIENT and f["rule"] == "vanishing-gradient"
                   for f in findings)
    if fmt == "sarif":
        validate_sarif(json.loads(out))


def test_no_gradients_skips_the_backward_analysis(deep, capsys):
    _, out, _ = run(["check", deep["relu"], "--no-gradients", "--format", "json"], capsys)
    assert VANISHING_GRADIENT not in out


def test_explain(capsys):
    code, out, _ = run(["check", "--explain", "ONNXINIT006"], capsys)
    assert code == 0 and "vanishing-gradient" in out


def test_a_weight_shared_over_unrolled_steps_is_one_parameter(tmp_path):
    """An RNN cell unrolled over 24 steps (``nn.RNNCell`` in a Python loop exports so): every
    step's Gemms read the same ``w_ih`` and ``w_hh``. The gradient of the first step's use is
    tiny (tanh with weights of gain 0.5 over 24 steps), but the parameter's update is the sum
    over its uses: one parameter, not 48 layers. Before, the first use over the last failed
    ``check`` with ONNXINIT006 (an ``nn.RNNCell`` model of 32 steps: 3.7e-10)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    features, hidden, steps = 16, 32, 24
    inits = [numpy_helper.from_array((rng.standard_normal(shape) * 0.5 / np.sqrt(shape[1]))
                                     .astype(np.float32), name)
             for name, shape in (("w_ih", (hidden, features)), ("w_hh", (hidden, hidden)),
                                 ("head", (10, hidden)))]
    nodes, h = [], None
    for t in range(steps):
        nodes.append(helper.make_node("Gemm", ["x", "w_ih"], [f"a{t}"], transB=1))
        if h is not None:
            nodes.append(helper.make_node("Gemm", [h, "w_hh"], [f"r{t}"], transB=1))
            nodes.append(helper.make_node("Add", [f"a{t}", f"r{t}"], [f"z{t}"]))
        nodes.append(helper.make_node("Tanh", [f"z{t}" if h is not None else f"a{t}"],
                                      [f"h{t}"]))
        h = f"h{t}"
    nodes.append(helper.make_node("Gemm", [h, "head"], ["y"], transB=1))
    graph = helper.make_graph(
        nodes, "unrolled", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [32, features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [32, 10])], inits)
    path = tmp_path / "unrolled.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                ir_version=8), str(path))
    analysis = analyze(path, batch_size=32, backward=True)
    layers = layer_gradients(analysis, paths_of(analysis))
    assert sorted(layer.weight for layer in layers) == ["w_hh", "w_ih"]
    assert VANISHING_GRADIENT not in [f.rule_id for f in find(analysis)]
