"""Propagation never reports a NaN or infinite prediction: it stops with PredictionError naming
the node, the CLI turns that into one line and exit 2, and ``check`` never passes the model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxinit.analysis import analyze
from onnxinit.errors import PredictionError
from onnxinit.moments import Moments
from onnxinit.finite_predictions import require_finite
from tests.cli import run
from tests.models import make_model


def _asin_model() -> onnx.ModelProto:
    # Asin has no rule: the empirical fallback runs it on N(0, 1) samples, and asin of |x| > 1
    # is NaN, so the fallback's measurement is NaN
    nodes = [helper.make_node("Asin", ["x"], ["y"], name="asin_node"),
             helper.make_node("Relu", ["y"], ["z"], name="relu")]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
                      [helper.make_tensor_value_info("z", TensorProto.FLOAT, [4, 64])])


def test_non_finite_fallback_prediction_is_an_error_naming_the_node():
    with pytest.raises(PredictionError, match="asin_node") as info:
        analyze(_asin_model())
    assert "'y'" in str(info.value)


@pytest.mark.parametrize("command", ["analyze", "check"])
def test_cli_reports_a_non_finite_prediction_in_one_line_with_exit_2(command, tmp_path, capsys):
    path = tmp_path / "asin.onnx"
    onnx.save(_asin_model(), path)
    code, out, err = run([command, path], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "asin_node" in lines[0], err
    assert "Traceback" not in err and "passed" not in out.lower()


@pytest.mark.parametrize("mean, var", [
    (np.array([0.0, np.nan]), np.array([1.0, 1.0])),
    (np.array([0.0, 0.0]), np.array([1.0, np.inf])),
    (np.array([0.0, np.inf]), np.array([1.0, 0.0])),
    (np.array([0.0, -np.inf]), np.array([1.0, 2.0])),  # -inf with a variance is not a mask
    (np.array([-np.inf, -np.inf]), np.array([0.0, 0.0])),  # nothing left to describe
])
def test_non_finite_statistics_are_rejected(mean, var):
    with pytest.raises(PredictionError):
        require_finite(Moments(mean, var), "n", "Op", "t", "rule")


def test_masked_elements_are_allowed_and_excluded_from_the_totals():
    m = Moments(np.array([1.0, 3.0, -np.inf]), np.array([2.0, 2.0, 0.0]))
    require_finite(m, "n", "Op", "t", "rule")
    mean, var = m.total()
    assert mean == pytest.approx(2.0) and var == pytest.approx(3.0)
