"""``analyze --plot FILE``: the variance-by-depth figure alone, as PNG or SVG; and the user
errors of ``--plot`` and ``report`` (each one line, exit 2, nothing written)."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest

from tests.cli import run

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
MODEL = SAMPLES / "resnet20_nobn.onnx"


def _one_line_error(result, text: str) -> None:
    code, out, err = result
    assert code == 2 and out == "", (code, out, err)
    assert len(err.strip().splitlines()) == 1 and err.startswith("onnxinit: error:"), err
    assert text in err, err


def test_plot_png_is_the_figure(tmp_path, capsys):
    image = pytest.importorskip("matplotlib.image")
    target = tmp_path / "variance.png"
    code, out, err = run(["analyze", MODEL, "--plot", target], capsys)
    assert code == 0, err
    assert f"wrote {target}" in out and "/layer3/layer3.2/Add_output_0" in out  # and the table
    pixels = image.imread(str(target))[..., :3]
    assert pixels.shape[0] > 300 and pixels.shape[1] > 600
    assert 0.02 < np.mean(np.any(pixels < 0.95, axis=-1)) < 0.6


def test_plot_svg_is_deterministic_svg(tmp_path, capsys):
    first, second = tmp_path / "a.svg", tmp_path / "b.svg"
    for target in (first, second):
        assert run(["analyze", MODEL, "--plot", target, "--json"], capsys)[0] == 0
    root = ElementTree.parse(first).getroot()
    assert root.tag.endswith("svg")
    assert first.read_bytes() == second.read_bytes()
    text = first.read_text()
    assert "ONNXINIT001" in text and "variance (log scale)" in text


def test_plot_refuses_other_formats_and_several_models(tmp_path, capsys):
    _one_line_error(run(["analyze", MODEL, "--plot", tmp_path / "p.jpg"], capsys), ".png or .svg")
    _one_line_error(run(["analyze", MODEL, SAMPLES / "small_cnn.onnx", "--plot",
                         tmp_path / "p.png"], capsys), "one model")
    _one_line_error(run(["analyze", MODEL, "--plot", tmp_path / "missing" / "p.png"], capsys),
                    "no writable folder")
    assert not any(tmp_path.iterdir())


def test_without_matplotlib_the_error_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    hint = "pip install 'onnxinit[report]'"
    _one_line_error(run(["report", MODEL, "-o", tmp_path / "r.html"], capsys), hint)
    _one_line_error(run(["analyze", MODEL, "--plot", tmp_path / "p.png"], capsys), hint)
    assert not any(tmp_path.iterdir())


def test_report_refuses_a_second_model_that_is_not_a_rescaled_copy(tmp_path, capsys):
    _one_line_error(run(["report", MODEL, SAMPLES / "small_cnn.onnx", "-o", tmp_path / "r.html"],
                        capsys), "is not a rescaled copy of")
    assert not any(tmp_path.iterdir())


def test_report_writes_beside_the_model_by_default(tmp_path, capsys):
    model = tmp_path / "cnn.onnx"
    model.write_bytes((SAMPLES / "small_cnn.onnx").read_bytes())
    code, out, err = run(["report", model], capsys)
    assert code == 0, err
    assert (tmp_path / "cnn.report.html").read_text().startswith("<!DOCTYPE html>")
    assert out.strip() == f"wrote {tmp_path / 'cnn.report.html'}"
