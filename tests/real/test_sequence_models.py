"""Predictions on real sequence and attention networks (GPT-2, BERT, ViT, Swin, LSTM, GRU, a
bidirectional RNN; random initialization, exported in training mode as the README says) against
onnxruntime measurements at batch 8 (issue 10): at least 95% of the float activation tensors
within 10% of the measured variance, all within 2x, every one predicted, none NaN or infinite.

Small configurations of the same code paths (tests/real/sequence.py ``SMALL``): GPT-2 with its
causal mask, Llama (RMSNorm written out as ops, rotary embeddings, grouped-query attention),
BERT with its padding mask, ViT at 32x32 with 3 encoder layers (the token
correlation builds from layer 1 on), Swin with shifted windows and their mask, 2-layer recurrent
classifiers over 16 steps. The full-size table is ``benchmarks/real_accuracy_sequence.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytest.importorskip("transformers")

from tests.real.sequence import SMALL, compare, exported  # noqa: E402


# measured shortfalls (strict: a pass is reported)
_SHORT = {
    # P V from layer 1 on: the token-shared part of the values is under-predicted (through
    # LayerNorm and the MLP the field keeps one correlation for every feature): 92.5% within
    # 10%, the worst the layer-2 attention output projection at 0.77x
    "vit": "ViT attention outputs from layer 1 on under-predicted (0.77x at layer 2)",
    # 148 tensors, 93.9% within 10% (93.2% before the features' correlation, rules/
    # feature_pairs.py; 79.7% before the per-token variances), 100% within 2x. Left: layer 1's
    # attention output P V and its projection, 1.21-1.24x on this batch (1.10x over 16
    # batches: its tokens are 0.8 correlated), and the first norm's chain on the embeddings
    # (1.14-1.20x here, 1.00x over 16 batches: the variance of 256 draws of one table's rows'
    # mean square)
    "llama": "attention output P V of layer 1 over-predicted (1.23x); first RMSNorm 1.2x",
}
CASES = [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=_SHORT[name]))
         if name in _SHORT else name for name in SMALL]


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_predictions_match_measurements(name):
    result = compare(exported("small", name), batch_size=8, runs=SMALL[name].runs)
    assert result.error is None, result.error
    print(f"\n{name}: {len(result.tensors)} tensors, {result.within_10:.1%} within 10%, "
          f"{result.within_2x:.1%} within 2x, median predicted/measured "
          f"{result.median_ratio:.3f}, analyze {result.analyze_s:.1f} s")
    assert len(result.tensors) >= 10
    assert result.coverage == 1.0, [t for t, m in zip(result.tensors, result.missing) if m]
    assert not result.non_finite
    assert np.all(np.isfinite(result.predicted))
    assert result.within_2x == 1.0, result.worst(5)
    assert result.within_10 >= 0.95, result.worst(10)
