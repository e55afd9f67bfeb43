"""IDInit's results are predicted like any other model (issue 13 item 2): ``analyze --measure``
on ResNet-20 without BN after ``rescale --method idinit``. The identity patterns make convs that
copy channels; a copy keeps its input's distribution (rules/copies.py), so a ReLU after a copy of
a ReLU output is the identity rather than the ReLU of a Gaussian, and a residual sum with the
near-zero branch stays the skip's mixture.

The patch-maintain pattern (the default) also sums several shifted copies per output channel:
terms that share image pixels, whose covariance the cross-channel field carries
(onnxinit/cross_channel.py), and a ReLU of such a same-sign sum of ReLU outputs is its input
(rules/support.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxinit.analysis import analyze
from onnxinit.rescale import rescale

SAMPLE = Path(__file__).resolve().parents[1] / "sample_models" / "resnet20_nobn.onnx"


def _within(path) -> float:
    result = analyze(path, measure=True, batch_size=32, device="cpu")
    rows = [t for t in result.tensors if t.measured_var is not None]
    return float(np.mean([abs(t.var - t.measured_var) <= 0.10 * abs(t.measured_var)
                          for t in rows]))


@pytest.mark.parametrize("conv", ["dirac", "patch"])
def test_idinit_result_is_predicted(conv, tmp_path):
    out = tmp_path / f"idinit_{conv}.onnx"
    rescale(SAMPLE, "idinit", output=out, idinit_conv=conv)
    assert _within(out) >= 0.95


@pytest.mark.xfail(strict=True, reason=(
    "12 of 22 layers within 10% (measured 0.98-1.23; 3 of 22, 0.78-4.2, without the residual "
    "operands' covariance): Relu(skip + branch) is predicted 3-12% low per channel: the part "
    "of the branch not explained by the skip is taken as independent and Gaussian, where it "
    "is skewed (measured skewness up to 0.9: the branch's third cumulant is not carried "
    "through its convs), and the field through the ReLU of that mixture is carried unchanged"))
def test_idinit_autoinit_reaches_its_target(tmp_path):
    out = tmp_path / "idinit_autoinit.onnx"
    rescale(SAMPLE, "idinit,autoinit", output=out)
    result = analyze(out, measure=True, batch_size=32, device="cpu")
    layers = [t for t in result.tensors if t.op in ("Conv", "Gemm")]
    assert len(layers) == 22
    assert all(abs(t.measured_var - 1.0) <= 0.10 for t in layers), [
        (t.name, round(t.measured_var, 3)) for t in layers]
