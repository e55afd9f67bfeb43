"""Files that are not valid ONNX graphs are refused with the reason (exit 2, one line), and
valid ones that onnx's strict inference dislikes but onnxruntime runs are still analysed."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit import analyze
from onnxinit.errors import ModelLoadError

from .models import make_model
from .test_loading import run_cli

X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 16])
Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 16])


def _weight(rows=16, cols=16):
    rng = np.random.default_rng(0)
    return numpy_helper.from_array((rng.standard_normal((rows, cols)) / 4).astype(np.float32), "w")


def _runtime_refuses(model) -> bool:
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001
        return True
    return False


def test_undefined_input_is_refused(tmp_path, capsys):
    model = make_model([helper.make_node("MatMul", ["x", "nope"], ["y"])], [X], [Y])
    assert _runtime_refuses(model)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    code, _, err = run_cli(["analyze", str(path)], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "'nope'" in err and "MatMul" in err


def test_tensor_written_twice_is_refused():
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"]),
                        helper.make_node("Relu", ["x"], ["y"])], [X], [Y], [_weight()])
    with pytest.raises(ModelLoadError, match="written by two nodes"):
        analyze(model)


def test_node_overwriting_an_initializer_is_refused():
    model = make_model([helper.make_node("Relu", ["x"], ["w"]),
                        helper.make_node("MatMul", ["x", "w"], ["y"])], [X], [Y], [_weight()])
    with pytest.raises(ModelLoadError, match="already a graph input or initializer"):
        analyze(model)


def test_subgraph_reading_an_undefined_tensor_is_refused():
    body = helper.make_graph([helper.make_node("Relu", ["ghost"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [8, 16])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [8, 16])])
    model = make_model([helper.make_node("If", ["cond"], ["y"], then_branch=body,
                                         else_branch=other)], [X], [Y],
                       [numpy_helper.from_array(np.array(True), "cond")])
    with pytest.raises(ModelLoadError, match="'ghost'"):
        analyze(model)


def test_incompatible_matmul_is_refused():
    """A 16-wide input times a 7x16 weight: onnxruntime refuses it; so does the analysis (it
    used to predict a variance for it)."""
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [X], [Y],
                       [_weight(7, 16)])
    assert _runtime_refuses(model)
    with pytest.raises(ModelLoadError, match="Incompatible dimensions"):
        analyze(model)


def test_add_of_float_and_int_is_refused():
    model = make_model([helper.make_node("Add", ["x", "k"], ["y"])], [X], [Y],
                       [numpy_helper.from_array(np.ones((8, 16), np.int64), "k")])
    assert _runtime_refuses(model)
    with pytest.raises(ModelLoadError, match="not a valid ONNX model"):
        analyze(model)


def test_declared_output_shape_that_runtime_accepts_is_analysed():
    """The output is declared 8x16 but is 16x16: strict inference fails, onnxruntime runs the
    model, so it is analysed (not refused)."""
    w = numpy_helper.from_array(np.eye(16, dtype=np.float32), "w")
    model = make_model([helper.make_node("Relu", ["w"], ["r"]),
                        helper.make_node("MatMul", ["x", "r"], ["y"])], [X],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])], [w])
    with pytest.raises(Exception):
        onnx.shape_inference.infer_shapes(model, strict_mode=True)
    assert not _runtime_refuses(model)
    result = analyze(model)
    assert result.tensors[-1].name == "y"


def _gemm_chain(opset):
    b = numpy_helper.from_array(np.zeros(16, np.float32), "b")
    return make_model([helper.make_node("Gemm", ["x", "w", "b"], ["h"]),
                       helper.make_node("Tanh", ["h"], ["y"])], [X], [Y], [_weight(), b],
                      opset=opset)


@pytest.mark.parametrize("command", ["analyze", "check"])
def test_opset_older_than_onnxruntime_implements_is_refused(tmp_path, capsys, command):
    """An opset-1 Gemm has neither a kernel in onnxruntime nor a rule of that opset: it used
    to be passed through unchanged, and check passed a graph it had not predicted."""
    model = _gemm_chain(opset=1)
    assert _runtime_refuses(model)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    code, out, err = run_cli([command, str(path)], capsys)
    assert code == 2 and "opset 1" in err and "Gemm-1" in err and "convert_version" in err
    assert "Traceback" not in err and "exploding" not in out


def test_opset_7_model_is_analysed():
    model = _gemm_chain(opset=7)
    assert not _runtime_refuses(model)
    result = analyze(model)
    assert result.tensors[-1].rule not in ("empirical", "pass-through")


def test_unknown_opset_is_warned():
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [X], [Y], [_weight()],
                       opset=onnx.defs.onnx_opset_version() + 1)
    result = analyze(model)
    assert any("knows up to" in w for w in result.warnings)


def test_initializer_shorter_than_its_shape_is_refused(tmp_path, capsys):
    w = _weight()
    w.raw_data = w.raw_data[:100]
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [X], [Y], [w])
    assert _runtime_refuses(model)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    for command in (["analyze", str(path)], ["rescale", str(path), "-o", str(tmp_path / "o.onnx")]):
        code, _, err = run_cli(command, capsys)
        assert code == 2 and "holds 100 bytes" in err and "needs 1024" in err
    assert not (tmp_path / "o.onnx").exists()


def test_initializer_with_too_few_typed_values_is_refused():
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[16, 16])
    w.float_data.extend([0.1] * 200)
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [X], [Y], [w])
    with pytest.raises(ModelLoadError, match="holds 200 values"):
        analyze(model)


def test_training_batchnorm_with_pruned_statistics_outputs_is_analysed():
    """training_mode=1 with one output (a graph tool pruned the unused running-statistics
    outputs): strict inference and onnxruntime object, but the computation is defined; it is
    analysed with batch statistics, not refused."""
    c = 3
    ones, zeros = np.ones(c, np.float32), np.zeros(c, np.float32)
    model = make_model(
        [helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"],
                          training_mode=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, c, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, c, 4, 4])],
        [numpy_helper.from_array(a, n) for a, n in ((ones, "g"), (zeros, "b"), (zeros, "m"),
                                                    (ones, "v"))])
    assert _runtime_refuses(model)
    assert analyze(model).tensors[-1].name == "y"


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_weights_that_are_not_finite_are_named(tmp_path, capsys, bad):
    # the prediction is not finite because the model's weight is not: say which weight, in one
    # line (it was "a bug in onnxinit", after a numpy RuntimeWarning)
    w = numpy_helper.to_array(_weight()).copy()
    w[3, 4] = bad
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [X], [Y],
                       [numpy_helper.from_array(w, "w")])
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    for command in (["analyze", str(path)], ["check", str(path)],
                    ["rescale", str(path), "-o", str(tmp_path / "o.onnx")]):
        code, _, err = run_cli(command, capsys)
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert "initializer 'w'" in err and "bug" not in err and "Warning" not in err
    assert not (tmp_path / "o.onnx").exists()


def _conv_model(weight_shape, **attributes):
    w = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal(weight_shape).astype(np.float32), "w")
    return make_model([helper.make_node("Conv", ["x", "w"], ["y"], **attributes)],
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])


def _runtime_cannot_run(model) -> bool:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    try:
        session.run(None, {"x": np.zeros((2, 3, 8, 8), np.float32)})
    except Exception:  # noqa: BLE001
        return True
    return False


def _assert_refused_when_run(model, reason, tmp_path, capsys):
    """onnxruntime fails on ``model`` only when it runs; analyze and check refuse it in one
    line naming ``reason``."""
    assert _runtime_cannot_run(model)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    for command in (["analyze", str(path)], ["check", str(path)]):
        code, _, err = run_cli(command, capsys)
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert reason in err


@pytest.mark.parametrize("weight_shape, attributes, reason", [
    ((4, 2, 3, 3), {}, "has 3 channels but its weight 'w' of shape 4x2x3x3"),
    ((4, 3, 3, 3), {"kernel_shape": [5, 5]}, "kernel_shape [5, 5] but its weight 'w'"),
    ((6, 2, 3, 3), {"group": 3}, "has 3 channels but its weight 'w' of shape 6x2x3x3 (group 3)"),
])
def test_conv_whose_weight_does_not_fit_is_refused(tmp_path, capsys, weight_shape, attributes,
                                                   reason):
    # onnx's inference and onnxruntime's session creation accept these; onnxruntime fails only
    # when the Conv runs. They were analysed as if they ran (and check passed them)
    _assert_refused_when_run(_conv_model(weight_shape, **attributes), reason, tmp_path, capsys)


def _ones(name, shape):
    return numpy_helper.from_array(np.ones(shape, np.float32), name)


def _parameter_model(op, shapes, **attributes):
    """x [2, 3, 8, 8] into one ``op`` whose constant inputs have ``shapes`` (Gemm: flattened)."""
    names = [f"p{i}" for i in range(len(shapes))]
    nodes = [helper.make_node(op, ["x", *names], ["y"], **attributes)]
    if op == "Gemm":
        nodes = [helper.make_node("Flatten", ["x"], ["f"]),
                 helper.make_node(op, ["f", *names], ["y"], **attributes)]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                      [_ones(n, s) for n, s in zip(names, shapes)])


@pytest.mark.parametrize("op, shapes, attributes, reason", [
    ("Conv", [(4, 3, 3, 3), (3,)], {}, "its bias 'p1' has shape [3]"),
    ("ConvTranspose", [(3, 2, 3, 3), (2,)], {"group": 3}, "makes 6 output channels"),
    ("InstanceNormalization", [(3,), (4,)], {}, "'p1' of shape [4] does not fit"),
    ("LayerNormalization", [(7,), (8,)], {"axis": -1}, "'p0' of shape [7] does not fit"),
    ("Gemm", [(5, 192), (3,)], {"transB": 1}, "'p1' of shape [3] does not fit its output [2, 5]"),
])
def test_parameters_that_do_not_fit_are_refused(tmp_path, capsys, op, shapes, attributes, reason):
    # onnx's inference and onnxruntime's session creation accept these; onnxruntime fails only
    # when the node runs. They were passed through unchanged with a warning (and check ran)
    _assert_refused_when_run(_parameter_model(op, shapes, **attributes), reason, tmp_path,
                             capsys)


@pytest.mark.parametrize("op, shapes, attributes", [
    ("Conv", [(4, 3, 3, 3), (4,)], {}),
    ("ConvTranspose", [(3, 2, 3, 3), (6,)], {"group": 3}),
    ("InstanceNormalization", [(3,), (3,)], {}),
    ("LayerNormalization", [(8,), (1,)], {"axis": -1}),
    ("LayerNormalization", [(8, 8), (8,)], {"axis": 2}),
    ("Gemm", [(5, 192), (5,)], {"transB": 1}),
    ("Gemm", [(5, 192), (1, 5)], {"transB": 1}),
    ("Gemm", [(5, 192), ()], {"transB": 1}),
    ("Gemm", [(192, 5), (2, 1)], {}),
])
def test_parameters_that_fit_are_analysed(op, shapes, attributes):
    model = _parameter_model(op, shapes, **attributes)
    assert not _runtime_cannot_run(model)
    assert analyze(model).tensors[-1].name == "y"


def test_grouped_conv_that_fits_is_analysed():
    assert analyze(_conv_model((6, 1, 3, 3), group=3)).tensors[-1].name == "y"


def test_op_that_neither_onnx_nor_onnxruntime_knows_is_refused(tmp_path, capsys):
    model = make_model([helper.make_node("FooBar", ["x"], ["y"])], [X], [Y])
    assert _runtime_refuses(model)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    for command in (["analyze", str(path)], ["check", str(path)]):
        code, _, err = run_cli(command, capsys)
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert "no op FooBar in the default ONNX domain" in err


def test_node_with_an_empty_op_type_is_refused():
    model = make_model([helper.make_node("", ["x"], ["y"])], [X], [Y])
    with pytest.raises(ModelLoadError, match="empty op_type"):
        analyze(model)
