"""``onnxinit rescale`` and ``export-weights`` as a user runs them: what they write, what they
refuse before writing anything."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import onnx
import pytest

from .cli import run

REPO = Path(__file__).resolve().parent.parent
SMALL_CNN = REPO / "sample_models" / "small_cnn.onnx"


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_dry_run_writes_nothing(tmp_path, capsys):
    """Item 6: --dry-run with --export-weights printed "nothing written" and wrote the weights.
    Options that have nothing to do in a dry run are refused; --report still works."""
    for extra in (["--export-weights", tmp_path / "w.npz"], ["-o", tmp_path / "m.onnx"],
                  ["--in-place"]):
        code, out, err = run(["rescale", SMALL_CNN, "--dry-run", *extra], capsys)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
        assert "--dry-run" in err and "Traceback" not in err
        assert _files(tmp_path) == set()
    code, out, _ = run(["rescale", SMALL_CNN, "--dry-run", "--report", tmp_path / "r.json"],
                       capsys)
    assert code == 0 and out.startswith("dry run: no model written")
    assert _files(tmp_path) == {"r.json"}


@pytest.mark.parametrize("clash", [("-o", "--export-weights"), ("-o", "--report"),
                                   ("--report", "--export-weights")])
def test_two_outputs_that_are_one_file_are_refused_before_writing(clash, tmp_path, capsys):
    """Item 7: -o o2.npz --export-weights o2.npz reported an error and left a model named o2.npz
    behind; any two outputs naming one file are refused before anything is written."""
    same = tmp_path / "o2.npz"
    args = ["rescale", SMALL_CNN]
    for option in clash:
        args += [option, same]
    if "-o" not in clash:
        args += ["-o", tmp_path / "m.onnx"]
    code, out, err = run(args, capsys)
    assert code == 2 and out == "" and "same file" in err and len(err.strip().splitlines()) == 1
    assert _files(tmp_path) == set()


def test_weights_may_not_overwrite_the_default_output(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    model.write_bytes(SMALL_CNN.read_bytes())
    code, _, err = run(["rescale", model, "--export-weights", tmp_path / "m.autoinit.onnx"],
                       capsys)
    assert code == 2 and "same file" in err
    assert _files(tmp_path) == {"m.onnx"}


def test_in_place_and_output_are_exclusive(tmp_path, capsys):
    """Item 13: --in-place -o other.onnx silently ignored --in-place."""
    model = tmp_path / "m.onnx"
    model.write_bytes(SMALL_CNN.read_bytes())
    before = model.read_bytes()
    code, out, err = run(["rescale", model, "--in-place", "-o", tmp_path / "other.onnx"],
                         capsys)
    assert code == 2 and out == "" and "--in-place" in err
    assert _files(tmp_path) == {"m.onnx"} and model.read_bytes() == before
    code, out, _ = run(["rescale", model, "--in-place"], capsys)
    assert code == 0 and model.read_bytes() != before and _files(tmp_path) == {"m.onnx"}


def test_export_format_and_suffix_must_agree(tmp_path, capsys):
    """Item 13: --format safetensors -o w.npz wrote safetensors bytes under a .npz name."""
    code, out, err = run(["export-weights", SMALL_CNN, "--format", "safetensors",
                          "-o", tmp_path / "w.npz"], capsys)
    assert code == 2 and out == "" and "--format safetensors" in err
    assert _files(tmp_path) == set()
    code, _, _ = run(["export-weights", SMALL_CNN, "--format", "npz", "-o", tmp_path / "w.bin"],
                     capsys)
    assert code == 0 and (tmp_path / "w.bin").read_bytes()[:2] == b"PK"  # an npz (a zip)


def test_missing_safetensors_hint_names_rescale_options(tmp_path, capsys, monkeypatch):
    """Item 14: without the safetensors package, rescale's hint named export-weights' options
    (-o FILE.npz, --format npz) that rescale does not have."""
    monkeypatch.setitem(sys.modules, "safetensors", None)
    code, out, err = run(["rescale", SMALL_CNN, "-o", tmp_path / "m.onnx", "--export-weights",
                          tmp_path / "w.safetensors"], capsys)
    assert code == 2 and out == "" and _files(tmp_path) == set()
    assert "--export-weights" in err and ".npz" in err
    assert "--format" not in err and "-o FILE" not in err


def test_safetensors_is_a_core_dependency():
    """Item 14: the default weights format works with the README's default install."""
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert any(d.replace(" ", "").startswith("safetensors") for d in
               project["project"]["dependencies"])


@pytest.mark.parametrize("args", [["analyze", SMALL_CNN, "--measure"],
                                  ["rescale", SMALL_CNN, "--method", "lsuv", "--dry-run"]])
def test_negative_seed_is_a_usage_error(args, capsys):
    """Item 8: a negative --seed ended in a numpy traceback, exit 1."""
    code, out, err = run([*args, "--seed", "-1"], capsys)
    assert code == 2 and out == "" and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "--seed" in err


def test_rescaled_model_is_still_written_and_loadable(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    code, _, _ = run(["rescale", SMALL_CNN, "-o", out, "--export-weights", tmp_path / "w.npz",
                      "--report", tmp_path / "r.json"], capsys)
    assert code == 0 and _files(tmp_path) == {"m.onnx", "w.npz", "r.json"}
    onnx.checker.check_model(onnx.load(str(out)))


def _measured_vars(model: Path) -> dict[str, float]:
    """Variance of every parametric node's output measured in onnxruntime (a seeded batch of
    64, training semantics): the oracle autoinit's predictions answer to."""
    from onnxinit.analysis import analyze

    analysis = analyze(model, measure=True, batch_size=64, seed=1)
    graph = analysis.graph
    outputs = {graph.node(n).output[0]: n for n in graph.parametric_nodes}
    return {outputs[t.name]: t.measured_var for t in analysis.tensors if t.name in outputs}


def test_keep_bias_reaches_the_target(tmp_path, capsys):
    """Item 3: with --keep-bias the fc layer of small_cnn ended at 0.843 while the report said
    "output var 1": y = s W x + b is not linear in s."""
    out, report = tmp_path / "kb.onnx", tmp_path / "kb.json"
    code, _, err = run(["rescale", SMALL_CNN, "--keep-bias", "-o", out, "--report", report],
                       capsys)
    assert code == 0, err
    model = onnx.load(str(out))
    bias = next(t for t in model.graph.initializer if t.name == "fc.bias")
    assert onnx.numpy_helper.to_array(bias).any()  # the bias really was kept
    measured = _measured_vars(out)
    assert all(0.93 <= v <= 1.07 for v in measured.values()), measured
    layers = json.loads(report.read_text())["method_reports"]["autoinit"]["layers"]
    assert all(abs(layer["output_var"] - 1) < 1e-6 for layer in layers)


def test_keep_bias_says_when_the_target_cannot_be_met(tmp_path, capsys):
    """A target below what the kept biases alone give is reported as unreachable, with the
    variance reached, instead of claiming the target."""
    report = tmp_path / "kb.json"
    code, _, _ = run(["rescale", SMALL_CNN, "--keep-bias", "--target-var", "0.001",
                      "--dry-run", "--report", report], capsys)
    assert code == 0
    data = json.loads(report.read_text())
    layers = data["method_reports"]["autoinit"]["layers"]
    unreachable = [layer for layer in layers if "unreachable" in layer.get("note", "")]
    assert unreachable and all(layer["output_var"] > 0.001 for layer in unreachable)
    weight = unreachable[0]["weight"]
    assert "unreachable" in data["changes"][weight]["target"]
    assert data["changes"][weight]["target"] != "output var 0.001"
