"""The backward analysis end to end: analyze(backward=True), --json fields, the CLI."""

from __future__ import annotations

import json

from onnxinit import analyze, predict_gradients
from tests.cli import run
from tests.samples import sample


def test_small_cnn_gradients_within_20_percent_of_the_autodiff():
    analysis = analyze(sample("small_cnn"), batch_size=8, backward=True, measure=True)
    tensors = analysis.backward.tensors
    assert len(tensors) == len(analysis.tensors)
    errors = {n: g.relative_error for n, g in tensors.items()}
    assert all(e < 0.2 for e in errors.values()), errors
    weights = [p for p in analysis.backward.parameters if p.role == "weight"]
    assert [p.name for p in weights] == ["conv1.weight", "conv2.weight", "conv3.weight",
                                         "fc.weight"]
    assert all(p.update_ratio > 0 and p.measured_grad_var > 0 for p in weights)


def test_predict_gradients_is_the_backward_part_of_analyze():
    alone = predict_gradients(sample("small_cnn"), batch_size=8, loss="mse")
    assert alone.loss == "mse"
    assert alone.tensors["logits"].var > 0 and alone.tensors["logits"].measured_var is None


def test_json_carries_gradient_fields_and_parameters(capsys):
    code, out, err = run(["analyze", sample("small_cnn"), "--backward", "--loss", "unit",
                          "--batch-size", "4", "--json"], capsys)
    assert code == 0, err
    document = json.loads(out)
    assert document["backward"] == {"loss": "unit"}
    logits = next(t for t in document["tensors"] if t["name"] == "logits")
    assert logits["grad_var"] == 1.0 and logits["grad_mean"] == 0.0
    assert {p["name"] for p in document["parameters"]} >= {"fc.weight", "fc.bias"}
    assert all({"node", "role", "grad_var", "weight_rms", "update_ratio"} <= set(p)
               for p in document["parameters"])


def test_loss_without_backward_is_a_user_error(capsys):
    code, _, err = run(["analyze", sample("small_cnn"), "--loss", "mse"], capsys)
    assert code == 2 and "--backward" in err


def _scalar_loss_model():
    """L = mean((x W)^2): a model exported with its loss, whose output is a scalar."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from tests.models import make_model

    w = numpy_helper.from_array(
        (np.random.default_rng(0).standard_normal((16, 8)) / 4).astype(np.float32), "w")
    return make_model(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Mul", ["h", "h"], ["s"]),
         helper.make_node("ReduceMean", ["s"], ["loss"], keepdims=0)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [32, 16])],
        [helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])], [w])


def test_a_scalar_output_is_the_loss_itself():
    # cross-entropy has no class axis on a scalar: check failed with an IndexError. The output
    # is the loss, dL/dloss = 1, and dL/dh = 2 h / numel: checked against the autodiff
    analysis = analyze(_scalar_loss_model(), backward=True, measure=True, gradient_batches=8)
    backward = analysis.backward
    assert backward.tensors["loss"].mean == 1.0 and backward.tensors["loss"].var == 0.0
    assert any("taken as the loss itself" in w for w in backward.warnings)
    h = backward.tensors["h"]
    assert abs(h.var / h.measured_var - 1) < 0.1, (h.var, h.measured_var)


def test_check_of_a_model_with_a_scalar_output(tmp_path, capsys):
    import onnx

    path = tmp_path / "m.onnx"
    onnx.save(_scalar_loss_model(), path)
    code, _, err = run(["check", str(path)], capsys)
    assert code == 0 and "Traceback" not in err and "internal error" not in err, err
