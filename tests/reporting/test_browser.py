"""The report in a real browser: headless Chromium renders report.html; the screenshot is not
blank and shows the plot (its predicted-variance line colour), and the page logs nothing on the
console (it has no script; a failed resource or a blocked load would log)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxinit.reporting.plot import COLORS
from tests.cli import run

from .browser import screenshot

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"


def _pixels(shot: Path) -> np.ndarray:
    image = pytest.importorskip("matplotlib.image").imread(str(shot))
    return np.round(image[..., :3] * 255).astype(int)


def _near(pixels: np.ndarray, hex_color: str, tolerance: int = 12) -> int:
    rgb = np.array([int(hex_color[k:k + 2], 16) for k in (1, 3, 5)])
    return int(np.sum(np.all(np.abs(pixels - rgb) <= tolerance, axis=-1)))


def test_report_renders_in_chromium_without_console_messages(tmp_path, capsys):
    rescaled = tmp_path / "resnet20.autoinit.onnx"
    assert run(["rescale", SAMPLES / "resnet20_nobn.onnx", "-o", rescaled, "-q"], capsys)[0] == 0
    page = tmp_path / "report.html"
    code, _, err = run(["report", SAMPLES / "resnet20_nobn.onnx", rescaled, "--measure",
                        "-o", page], capsys)
    assert code == 0, err
    shot = tmp_path / "shot.png"
    console = screenshot(page, shot, tmp_path / "profile")
    assert console == []
    pixels = _pixels(shot)
    white = np.all(pixels >= 250, axis=-1)
    assert 0.02 < 1 - white.mean() < 0.9  # something drawn, not a solid page
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100
    # the embedded plot decoded and was painted: its two model curves are on screen
    assert _near(pixels, COLORS["predicted"]) > 300
    assert _near(pixels, COLORS["rescaled"]) > 300


def test_the_console_check_sees_a_script_error(tmp_path):
    """What the test above relies on: chromium's log carries a page's console messages."""
    page = tmp_path / "broken.html"
    page.write_text("<html><body><p>x</p><script>console.error('boom');"
                    "undefinedFunction();</script></body></html>")
    console = screenshot(page, tmp_path / "shot.png", tmp_path / "profile", size=(400, 300))
    assert any("boom" in line for line in console)
    assert any("undefinedFunction" in line for line in console)
