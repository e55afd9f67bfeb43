"""``onnxinit analyze`` (and the warnings ``check`` shares with it) as a user runs them."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import onnx
import pytest

from .cli import run

REPO = Path(__file__).resolve().parent.parent
SMALL_CNN = REPO / "sample_models" / "small_cnn.onnx"
EVAL_WARNING = "looks like an eval-mode export"


def _export(module, path: Path, *, training: bool, **kwargs) -> Path:
    import torch

    buffer = io.BytesIO()
    module.train(training)
    extra = ({"training": torch.onnx.TrainingMode.TRAINING, "do_constant_folding": False}
             if training else {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 3, 16, 16),), buffer, dynamo=False,
                          input_names=["x"], **extra, **kwargs)
    path.write_bytes(buffer.getvalue())
    return path


def _convnet(torch, *, batchnorm: bool, zero_bias: bool = False):
    torch.manual_seed(0)
    layers, c = [], 3
    for _ in range(3):
        conv = torch.nn.Conv2d(c, 8, 3, padding=1, bias=not batchnorm)
        if zero_bias:
            torch.nn.init.zeros_(conv.bias)
        layers += [conv, torch.nn.BatchNorm2d(8)] if batchnorm else [conv]
        layers.append(torch.nn.ReLU())
        c = 8
    return torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(8, 10))


def _warnings(args, capsys) -> list[str]:
    code, _, err = run(args, capsys)
    assert code in (0, 1), err
    return [line for line in err.splitlines() if line.startswith("onnxinit: warning:")]


@pytest.fixture(scope="module")
def torch_exports(tmp_path_factory):
    torch = pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("exports")
    return {
        "eval_bn": _export(_convnet(torch, batchnorm=True), folder / "eval_bn.onnx",
                           training=False),
        "train_bn": _export(_convnet(torch, batchnorm=True), folder / "train_bn.onnx",
                            training=True),
        "zero_bias": _export(_convnet(torch, batchnorm=False, zero_bias=True),
                             folder / "zero_bias.onnx", training=True),
    }


def test_eval_export_warning_fires_on_a_folded_export_only(torch_exports, capsys):
    """Item 1: the warning is for an eval-mode export that folded BatchNormalization, not for a
    training export, nor for a network whose own init zeroes its Conv biases."""
    folded = onnx.load(str(torch_exports["eval_bn"]))
    assert "BatchNormalization" not in {n.op_type for n in folded.graph.node}  # really folded
    assert any(EVAL_WARNING in w for w in _warnings(["analyze", torch_exports["eval_bn"]],
                                                    capsys))
    assert not any(EVAL_WARNING in w for w in _warnings(["analyze", torch_exports["train_bn"]],
                                                        capsys))
    assert not any(EVAL_WARNING in w for w in _warnings(["analyze", torch_exports["zero_bias"]],
                                                        capsys))


@pytest.mark.parametrize("method", ["autoinit", "xavier", "kaiming", "idinit"])
def test_no_eval_export_warning_on_onnxinit_outputs(method, tmp_path, capsys):
    """Item 1: the methods zero the biases; their own output must not be called an eval export,
    in analyze (text and --json) nor in check."""
    out = tmp_path / f"out.{method}.onnx"
    code, _, err = run(["rescale", SMALL_CNN, "--method", method, "-o", out], capsys)
    assert code == 0, err
    model = onnx.load(str(out))
    biases = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer
              if t.name.startswith("conv") and t.name.endswith(".bias")]
    assert len(biases) == 3 and not any(b.any() for b in biases)  # the premise: zeroed
    assert not any(EVAL_WARNING in w for w in _warnings(["analyze", out], capsys))
    code, stdout, _ = run(["analyze", "--json", out], capsys)
    assert not any(EVAL_WARNING in w for w in json.loads(stdout)["warnings"])
    assert not any(EVAL_WARNING in w for w in _warnings(["check", out], capsys))


def _custom_op_model(path: Path) -> Path:
    """Two MatMuls and an op of an unknown domain (passed through by the fallback)."""
    import numpy as np
    from onnx import helper, numpy_helper

    w = numpy_helper.from_array(np.eye(8, dtype=np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
             helper.make_node("Mystery", ["h"], ["m"], name="mystery", domain="com.example"),
             helper.make_node("MatMul", ["m", "w"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [4, 8])],
                              [helper.make_tensor_value_info("y", 1, [4, 8])], [w])
    onnx.save_model(helper.make_model(graph, ir_version=8, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]), str(path))
    return path


@pytest.mark.parametrize("args, expected", [
    (["analyze", SMALL_CNN], ["loaded ", " in ", "propagated moments through 18 nodes"]),
    (["analyze", SMALL_CNN, "--measure"], ["measured ", "tensors in onnxruntime"]),
    (["check", SMALL_CNN], ["checked ", ": passed, 0 findings"]),
    (["rescale", SMALL_CNN, "--dry-run"], ["autoinit: 4 tensors scaled, 4 replaced in "]),
    (["rules"], ["op rules registered"]),
])
def test_verbose_says_what_ran_and_how_long(args, expected, capsys):
    """Item 9: -v printed nothing on any command."""
    code, quiet_out, quiet_err = run(args, capsys)
    assert code == 0 and "info:" not in quiet_err
    code, out, err = run([*args, "-v"], capsys)
    assert code == 0 and out == quiet_out  # logs never mix into the results
    info = [line for line in err.splitlines() if line.startswith("onnxinit: info: ")]
    assert all(any(e in line for line in info) for e in expected), err
    assert "debug:" not in err


def test_very_verbose_adds_per_node_detail_and_the_fallback(tmp_path, capsys):
    model = _custom_op_model(tmp_path / "custom.onnx")
    code, _, err = run(["analyze", model, "-v"], capsys)
    assert code == 0 and "passed through: 1 node (Mystery)" in err
    code, _, err = run(["analyze", model, "-vv"], capsys)
    assert "onnxinit: debug: node fc (MatMul) by " in err
    assert "onnxinit: debug: node mystery (Mystery): statistics passed through" in err
    code, _, err = run(["export-weights", SMALL_CNN, "-o", tmp_path / "w.npz", "-v"], capsys)
    assert code == 0 and "info: exported the float initializers" in err


@pytest.mark.parametrize("args, words", [
    (["--input-shape", "x:0x3x32x32"], "every dimension must be at least 1"),
    (["--stats", "x:0,0"], "VAR > 0"),
    (["--stats", "x:nan,1"], "finite"),
])
def test_degenerate_shapes_and_stats_are_refused(args, words, capsys):
    """Item 13: a zero dimension was accepted with three warnings and a garbage table; a zero
    variance flagged the input itself as vanishing."""
    code, out, err = run(["analyze", SMALL_CNN, *args], capsys)
    assert code == 2 and out == "" and words in err and len(err.strip().splitlines()) == 1


def test_stats_on_an_integer_input_is_refused(capsys):
    """Item 13: --stats on token ids was silently ignored."""
    model = REPO / "sample_models" / "transformer_postln.onnx"
    code, out, err = run(["analyze", model, "--stats", "input_ids:0,1"], capsys)
    assert code == 2 and out == "" and "not a float tensor" in err


def test_integer_input_models_get_no_ratio_to_their_input(capsys):
    """Item 15: the summary of a token-id model said "(0.03x the input)": it has no float input
    whose variance the output could be compared with."""
    model = REPO / "sample_models" / "transformer_postln.onnx"
    code, out, _ = run(["analyze", model], capsys)
    assert code == 0
    (summary,) = [line for line in out.splitlines() if "float tensors; output" in line]
    assert "x the input" not in summary
    code, out, _ = run(["analyze", SMALL_CNN], capsys)
    assert "x the input)" in out


def test_warnings_have_one_form_in_analyze_and_check(tmp_path, capsys):
    """Item 15: `onnxinit: warning:` in analyze, `onnxinit: WARNING: path:` in check."""
    model = _custom_op_model(tmp_path / "custom.onnx")
    forms = []
    for command in ("analyze", "check"):
        _, _, err = run([command, model], capsys)
        (line,) = [x for x in err.splitlines() if "passed through" in x]
        forms.append(line)
    assert forms[0] == forms[1]
    assert forms[0].startswith(f"onnxinit: warning: {model}: node mystery (Mystery)")


def test_data_that_is_a_text_file_is_named_as_such(tmp_path, capsys):
    """Item 15: a text file as --data reported "pickled (object) data"."""
    data = tmp_path / "calib.npz"
    data.write_text("x,y\n1,2\n")
    code, out, err = run(["rescale", SMALL_CNN, "--method", "lsuv", "--data", data,
                          "--dry-run"], capsys)
    assert code == 2 and out == "" and "not a NumPy .npz archive" in err
    assert "pickle" not in err


def test_rules_have_a_header_whole_names_and_formulas(capsys):
    """Item 15: `onnxinit rules` had no header, cut long names, and could not show the formula
    the README says each rule carries."""
    from onnxinit.rules import registered

    code, out, _ = run(["rules"], capsys)
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["domain", "op", "opsets", "rule", "source"]
    for reg in registered():
        assert any(reg.op_type in line.split() and reg.fn.__name__ in line.split()
                   for line in lines), reg
    code, out, _ = run(["rules", "Conv"], capsys)
    assert code == 0 and "Var_j(p) = sum" in out  # the conv rule's docstring formula
    code, out, err = run(["rules", "NoSuchOp"], capsys)
    assert code == 2 and "no rule for NoSuchOp" in err


def test_summary_names_the_graph_output_not_the_last_node(tmp_path, capsys):
    # a node whose output nothing reads comes last in the order; the summary named it
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from tests.models import make_model

    w = numpy_helper.from_array(np.eye(4, dtype=np.float32) * 3, "w")
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"]),
                        helper.make_node("Relu", ["x"], ["unused"])],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 4])], [w])
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    code, out, _ = run(["analyze", path], capsys)
    (summary,) = [line for line in out.splitlines() if "float tensors; output" in line]
    assert code == 0 and "output 'y' var 9 " in summary, summary


def _two_heads(path: Path) -> Path:
    """x -> Relu(x W) = h, then two heads: y1 = h (4 W1) and y2 = h W2, each [8, 10]."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(0, (2 / 16) ** 0.5, (16, 32)).astype(np.float32)
    w1 = rng.normal(0, 4 / 32 ** 0.5, (32, 10)).astype(np.float32)
    w2 = rng.normal(0, 1 / 32 ** 0.5, (32, 10)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["a"]), helper.make_node("Relu", ["a"], ["h"]),
         helper.make_node("MatMul", ["h", "w1"], ["y1"]),
         helper.make_node("MatMul", ["h", "w2"], ["y2"])],
        "two_heads", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 16])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, [8, 10]) for y in ("y1", "y2")],
        [numpy_helper.from_array(a, n) for a, n in ((w, "w"), (w1, "w1"), (w2, "w2"))])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                ir_version=8), path)
    return path


def test_loss_output_chooses_the_head_the_backward_loss_is_put_on(tmp_path, capsys):
    """--loss-output y2: the gradient reaches h through y2 alone (y1 gets none), and the
    prediction agrees with the gradient measured by autodiff on that head; the first head's
    weights are 4x larger, so a loss left on y1 would give h a gradient many times larger."""
    model = _two_heads(tmp_path / "two_heads.onnx")
    grads = {}
    for head in ("y1", "y2"):
        code, out, err = run(["analyze", model, "--backward", "--measure", "--json",
                              "--loss-output", head], capsys)
        assert code in (0, 1), err
        tensors = {t["name"]: t for t in json.loads(out)["tensors"]}
        other = "y1" if head == "y2" else "y2"
        assert "grad_var" not in tensors[other]
        h = tensors["h"]
        assert 0.8 < h["grad_var"] / h["measured_grad_var"] < 1.25, h
        grads[head] = h["measured_grad_var"]
    assert grads["y1"] > 4 * grads["y2"], grads


def test_loss_output_errors(tmp_path, capsys):
    from .cli import assert_one_line_error

    model = _two_heads(tmp_path / "two_heads.onnx")
    assert_one_line_error(*run(["analyze", model, "--backward", "--loss-output", "nope"], capsys),
                          "--loss-output", "nope")
    assert_one_line_error(*run(["analyze", model, "--loss-output", "y2"], capsys),
                          "--backward")
