"""``rescale`` end to end: autoinit on the sample models measured in onnxruntime, the check gate
before and after, reports, composition, refusals and the command line."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.analysis import analyze
from onnxinit.errors import InvalidOptionError, UnsupportedModelError
from onnxinit.rescale import rescale
from onnxinit.runtime import make_session

from .cli import run
from .samples import sample


def measured_parametric_vars(model) -> dict[str, float]:
    """Measured variance (onnxruntime, a seeded batch of 64, training semantics) of the output
    of every parametric node."""
    analysis = analyze(model, measure=True, batch_size=64, seed=1)
    graph = analysis.graph
    outputs = {graph.node(n).output[0]: n for n in graph.parametric_nodes}
    return {outputs[t.name]: t.measured_var for t in analysis.tensors if t.name in outputs}


@pytest.mark.parametrize("name", ["tanh_mlp50", "small_cnn", "resnet20_nobn"])
def test_autoinit_brings_every_parametric_output_to_unit_variance(name):
    before = measured_parametric_vars(sample(name))
    assert min(before.values()) < 0.5 or max(before.values()) > 2  # far outside to begin with
    after = measured_parametric_vars(rescale(sample(name), "autoinit", write=False).model)
    assert set(after) == set(before)
    print(f"{name}: measured parametric output var {min(before.values()):.3g}..",
          f"{max(before.values()):.3g} -> {min(after.values()):.3g}..{max(after.values()):.3g}")
    outside = {node: round(var, 3) for node, var in after.items() if not 0.8 <= var <= 1.25}
    assert not outside, outside


def test_check_fails_on_resnet20_nobn_and_passes_on_its_autoinit_result(tmp_path, capsys):
    model = sample("resnet20_nobn")
    assert run(["check", model], capsys)[0] == 1
    out = tmp_path / "resnet20.autoinit.onnx"
    code, stdout, _ = run(["rescale", model, "-o", out], capsys)
    assert code == 0 and f"wrote {out}" in stdout
    code, stdout, _ = run(["check", out], capsys)
    assert code == 0, stdout


def test_result_runs_and_differs_only_in_planned_tensors(tmp_path):
    model = sample("small_cnn")
    result = rescale(model, "autoinit", output=tmp_path / "out.onnx")
    original, rescaled = onnx.load(str(model)), onnx.load(str(result.output))
    assert [n.SerializeToString() for n in original.graph.node] == \
        [n.SerializeToString() for n in rescaled.graph.node]
    new = {t.name: t for t in rescaled.graph.initializer}
    for tensor in original.graph.initializer:
        same = tensor.SerializeToString() == new[tensor.name].SerializeToString()
        assert same == (tensor.name not in result.plan.changes), tensor.name
    feeds = {i.name: np.random.default_rng(0).standard_normal(
        [d.dim_value or 4 for d in i.type.tensor_type.shape.dim]).astype(np.float32)
        for i in original.graph.input}
    shapes = [o.shape for o in make_session(str(model)).run(None, feeds)]
    assert [o.shape for o in make_session(str(result.output)).run(None, feeds)] == shapes


def test_same_seed_same_bytes(tmp_path):
    model = sample("resnet20_nobn")
    a = rescale(model, "autoinit", output=tmp_path / "a.onnx").output.read_bytes()
    b = rescale(model, "autoinit", output=tmp_path / "b.onnx").output.read_bytes()
    assert a == b


def test_report_and_summary(tmp_path, capsys):
    model = sample("tanh_mlp50")
    report = tmp_path / "r.json"
    code, out, _ = run(["rescale", model, "-o", tmp_path / "o.onnx", "--report", report], capsys)
    assert code == 0
    data = json.loads(report.read_text())
    assert data["methods"] == ["autoinit"] and data["output"] == str(tmp_path / "o.onnx")
    weights = [n for n, c in data["changes"].items() if "scale" in c]
    assert len(weights) == 50
    layers = data["method_reports"]["autoinit"]["layers"]
    assert {"node", "input_mean", "input_var", "scale", "output_var"} <= set(layers[0])
    assert "50 tensors rescaled" in out and "largest scale" in out and "->" in out
    assert "note: sweep the training learning rate of a rescaled network" in out


def test_dry_run_writes_nothing(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    model.write_bytes(sample("small_cnn").read_bytes())
    code, out, _ = run(["rescale", model, "--dry-run"], capsys)
    assert code == 0 and "dry run" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_composition_idinit_then_autoinit(tmp_path):
    result = rescale(sample("resnet20_nobn"), "idinit,autoinit", output=tmp_path / "o.onnx")
    assert result.output.name == "o.onnx" and result.plan.method == "idinit,autoinit"
    assert set(result.method_reports) == {"idinit", "autoinit"}
    assert rescale(sample("resnet20_nobn"), "idinit,autoinit", write=False).output is None


def _quantized_model() -> onnx.ModelProto:
    x_scale = numpy_helper.from_array(np.array(0.1, np.float32), "xs")
    zero = numpy_helper.from_array(np.array(0, np.uint8), "xz")
    w = numpy_helper.from_array(np.ones((2, 2), np.uint8), "w")
    node = helper.make_node("QLinearMatMul", ["x", "xs", "xz", "w", "xs", "xz", "xs", "xz"],
                            ["y"])
    graph = helper.make_graph([node], "q", [helper.make_tensor_value_info("x", 2, [1, 2])],
                              [helper.make_tensor_value_info("y", 2, [1, 2])],
                              [x_scale, zero, w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_refusals(tmp_path, capsys):
    with pytest.raises(UnsupportedModelError, match="quantized"):
        rescale(_quantized_model(), write=False)
    no_params = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])]),
        opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(UnsupportedModelError, match="no float parameters"):
        rescale(no_params, write=False)
    with pytest.raises(InvalidOptionError, match="unknown method"):
        rescale(sample("small_cnn"), "autoinit,nope", write=False)
    model = tmp_path / "m.onnx"
    model.write_bytes(sample("small_cnn").read_bytes())
    for args in (["--method", "nope"], ["-o", model], ["-o", tmp_path / "no" / "dir.onnx"]):
        code, _out, err = run(["rescale", model, *args], capsys)
        assert code == 2 and err.startswith("onnxinit: error:"), (args, err)
        assert len(err.strip().splitlines()) == 1, (args, err)
    code, _, err = run(["rescale", model, "--target-var", "abc"], capsys)  # click usage error
    assert code == 2 and "Invalid value for '--target-var'" in err
    assert model.read_bytes() == sample("small_cnn").read_bytes()


def test_summary_of_a_data_driven_method(tmp_path, capsys):
    code, out, _ = run(["rescale", sample("small_cnn"), "--method", "gradinit",
                        "--gradinit-iterations", "2", "-o", tmp_path / "g.onnx", "-q"], capsys)
    assert code == 0
    assert "gradinit (held-out batches, kept iteration " in out and "): loss " in out
    moved = next(line for line in out.splitlines() if "gradinit moved most:" in line)
    assert moved.count(" x") == 3


def _count_propagations(monkeypatch) -> list[str]:
    """Record every start of a propagation (``propagate`` and autoinit's own pass both begin
    with ``start_propagation``)."""
    import onnxinit.methods.autoinit as autoinit_module
    import onnxinit.propagate as propagate_module

    started = []
    original = propagate_module.start_propagation

    def counting(graph, *args, **kwargs):
        started.append(graph.name)
        return original(graph, *args, **kwargs)

    monkeypatch.setattr(propagate_module, "start_propagation", counting)
    monkeypatch.setattr(autoinit_module, "start_propagation", counting)
    return started


def test_rescale_command_propagates_once(tmp_path, capsys, monkeypatch):
    """``onnxinit rescale`` propagates the model once (autoinit's pass, whose statistics are
    the "after"); the variances of the model as given take one more propagation, made only
    when --report records them."""
    model = sample("small_cnn")
    started = _count_propagations(monkeypatch)
    code, out, _ = run(["rescale", model, "-o", tmp_path / "o.onnx"], capsys)
    assert code == 0 and "after rescaling" in out
    assert len(started) == 1, started
    started.clear()
    code, out, _ = run(["rescale", model, "-o", tmp_path / "p.onnx", "--report",
                        tmp_path / "r.json"], capsys)
    assert code == 0 and "->" in out and len(started) == 2, started
    before = json.loads((tmp_path / "r.json").read_text())["outputs_var_before"]
    fresh = rescale(model, "autoinit", write=False)
    assert before == pytest.approx(fresh.outputs_var_before, rel=1e-12)


def _lstm_classifier() -> onnx.ModelProto:
    """x [T=5, batch, 8] -> LSTM (hidden 6) -> last hidden state -> MatMul (6 -> 3)."""
    rng = np.random.default_rng(0)
    hidden, features = 6, 8

    def init(name, shape):
        return numpy_helper.from_array(
            rng.uniform(-0.4, 0.4, shape).astype(np.float32), name)

    nodes = [helper.make_node("LSTM", ["x", "W", "R", "B"], ["", "h"], hidden_size=hidden),
             helper.make_node("Squeeze", ["h", "axis0"], ["h2"]),
             helper.make_node("MatMul", ["h2", "V"], ["y"])]
    inits = [init("W", (1, 4 * hidden, features)), init("R", (1, 4 * hidden, hidden)),
             init("B", (1, 8 * hidden)), init("V", (hidden, 3)),
             numpy_helper.from_array(np.array([0], np.int64), "axis0")]
    graph = helper.make_graph(nodes, "lstm", [helper.make_tensor_value_info("x", 1, [5, "batch", 8])],
                              [helper.make_tensor_value_info("y", 1, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_recurrent_weights_left_as_initialised_are_said():
    """An LSTM's W, R and B are not rescaled (no method has a rule for them): the written model
    holds them unchanged, and the report and the summary say so; the classifier after it is
    rescaled to its target, measured in onnxruntime."""
    model = _lstm_classifier()
    result = rescale(model, "autoinit", write=False)
    written = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    original = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for name in "WRB":
        assert np.array_equal(written[name], original[name])
    assert result.left_as_initialised == {"W": "LSTM", "R": "LSTM", "B": "LSTM"}
    assert result.to_dict(before=False)["left_as_initialised"] == result.left_as_initialised
    from onnxinit.report import rescale_summary
    assert "3 parameters of recurrent layers (LSTM) left as initialised" in rescale_summary(result)
    x = np.random.default_rng(1).standard_normal((5, 256, 8)).astype(np.float32)
    session = make_session(result.model.SerializeToString())
    assert float(session.run(None, {"x": x})[0].var()) == pytest.approx(1.0, rel=0.25)


def test_no_recurrent_note_without_recurrent_layers():
    result = rescale(sample("small_cnn"), "autoinit", write=False)
    assert result.left_as_initialised == {}
