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
