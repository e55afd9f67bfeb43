"""Bad input gets one clear error (exit 2 from the CLI), never a traceback."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit import analyze, load
from onnxinit.cli import main
from onnxinit.errors import ExternalDataError, ModelLoadError

from .models import make_model, mlp


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_missing_file(tmp_path, capsys):
    code, _, err = run_cli(["analyze", str(tmp_path / "nope.onnx")], capsys)
    assert code == 2
    assert "no such file" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_not_onnx(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("this is not a model\n" * 10)
    with pytest.raises(ModelLoadError, match="not"):
        load(path)


def test_truncated(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(mlp([16, 16, 16]), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    code, _, err = run_cli(["analyze", str(path)], capsys)
    assert code == 2 and str(path) in err and "Traceback" not in err


@pytest.mark.parametrize("name, text", [
    ("findings.json", '{"tool": "onnxinit", "models": []}'),  # onnx reads .json as JSON
    ("model.textproto", '{"ir_version": 8'),  # and .textproto as protobuf text
])
def test_text_formats_that_are_not_models(tmp_path, capsys, name, text):
    path = tmp_path / name
    path.write_text(text)
    code, _, err = run_cli(["analyze", str(path)], capsys)
    assert code == 2 and "not a readable ONNX model" in err
    assert "internal error" not in err and "Traceback" not in err


def test_json_model_loads(tmp_path):
    """A model saved in onnx's JSON format is read as the binary one is."""
    model = mlp([16, 16, 8])
    onnx.save(model, tmp_path / "m.json")
    assert analyze(tmp_path / "m.json").tensors[-1].var == pytest.approx(
        analyze(model).tensors[-1].var)


def _external_model(tmp_path):
    model = mlp([16, 32, 8])
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.onnx.data", size_threshold=0)
    return path


def test_external_data_loads(tmp_path):
    path = _external_model(tmp_path)
    graph = load(path)
    assert set(graph.external) == {"w0", "b0", "w1", "b1"}
    assert graph.value("w0").shape == (32, 16)


def test_missing_external_data(tmp_path, capsys):
    path = _external_model(tmp_path)
    (tmp_path / "ext.onnx.data").unlink()
    with pytest.raises(ExternalDataError, match="missing"):
        load(path)
    code, _, err = run_cli(["analyze", str(path)], capsys)
    assert code == 2 and "ext.onnx.data" in err


def test_external_data_outside_folder(tmp_path):
    inner = tmp_path / "models"
    inner.mkdir()
    model = mlp([4, 4])
    onnx.save_model(model, tmp_path / "secret.onnx", save_as_external_data=True,
                    location="secret.data", size_threshold=0)
    loaded = onnx.load(tmp_path / "secret.onnx", load_external_data=False)
    for tensor in loaded.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../secret.data"
    onnx.save(loaded, inner / "escape.onnx")
    with pytest.raises(ExternalDataError, match="outside"):
        load(inner / "escape.onnx")


def test_custom_domain_op_is_analysed_not_fatal():
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Mystery", ["r"], ["y"], domain="com.example"),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 4])],
        extra_opsets=[("com.example", 1)],
    )
    result = analyze(model)
    assert [t.name for t in result.tensors] == ["x", "r", "y"]
    assert result.tensors[-1].rule == "pass-through"
    assert any("Mystery" in w for w in result.warnings)


def test_if_node_is_opaque_and_warned():
    then_graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["t"])], "then", [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [8, 4])],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["e"])], "else", [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [8, 4])],
    )
    # the condition depends on the data (an If on a constant condition is its branch:
    # onnxinit.passes.static_control, tests/test_static_control.py)
    nodes = [helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
             helper.make_node("Greater", ["total", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=then_graph,
                              else_branch=else_graph)]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 4])],
        [numpy_helper.from_array(np.array(0, np.float32), "zero")],
    )
    result = analyze(model)
    assert any("subgraphs" in w and "opaque" in w for w in result.warnings)
    assert result.tensors[-1].name == "y"


def test_if_on_a_constant_condition_is_its_branch():
    """The same If on a constant true: y = Relu(x), Var = (1/2 - 1/(2 pi)) (= 0.3408) of an
    N(0, 1) x, no opaque subgraph left."""
    then_graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["t"])], "then", [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [8, 4])],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["e"])], "else", [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [8, 4])],
    )
    model = make_model(
        [helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 4])],
        [numpy_helper.from_array(np.array(True), "cond")],
    )
    result = analyze(model)
    assert not any("opaque" in w for w in result.warnings)
    y = next(t for t in result.tensors if t.name == "y")
    assert y.var == pytest.approx(0.5 - 1 / (2 * np.pi), rel=1e-6)


def test_fallback_warnings_of_one_op_and_reason_share_a_line(caplog):
    # an op without a rule in every block (EfficientNet's stochastic-depth draws were, before
    # rules/random_draws.py), each measured by the fallback for the same reason; one line
    # names the first and the last (-v logs each)
    import logging

    nodes, last = [], "x"
    for i in range(3):
        nodes += [helper.make_node("Hardmax", [last], [f"u{i}"], name=f"draw{i}"),
                  helper.make_node("Add", [last, f"u{i}"], [f"s{i}"], name=f"add{i}")]
        last = f"s{i}"
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 4])],
                       [helper.make_tensor_value_info(last, TensorProto.FLOAT, [8, 4])])
    with caplog.at_level(logging.INFO, logger="onnxinit"):
        result = analyze(model)
    lines = [w for w in result.warnings if "Hardmax" in w]
    assert len(lines) == 1 and "3 Hardmax nodes" in lines[0]
    assert "draw0" in lines[0] and "draw2" in lines[0]
    logged = [r.getMessage() for r in caplog.records
              if "analysed by the empirical fallback" in r.getMessage()]
    assert sorted(m.split()[1] for m in logged) == ["draw0", "draw1", "draw2"]
