"""Predictions on real sequence and attention networks (GPT-2, BERT, ViT, Swin, LSTM, GRU, a
bidirectional RNN; random initialization, exported in training mode as the README says) against
onnxruntime measurements at batch 8 (issue 10): at least 95% of the float activation tensors
within 10% of the measured variance, all within 2x, every one predicted, none NaN or infinite.

Small configurations of the same code paths (tests/real/sequence.py ``SMALL``): GPT-2 with its
causal mask, Llama (RMSNorm written out as ops, rotary embeddings, grouped-query attention),
BERT with its padding mask, ViT at 32x32 with 3 encoder layers (the token
correlation builds from layer 1 on), Swin with shifted windows and their mask, 2-layer recurrent
classifiers over 16 steps, an LSTM read by attention pooling (a score per step, softmax over
the steps). The full-size table is ``benchmarks/real_accuracy_sequence.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytest.importorskip("transformers")

from tests.real.sequence import SMALL, compare, exported  # noqa: E402


# measured shortfalls (strict: a pass is reported)
_SHORT: dict[str, str] = {
    # none left: the small ViT's "attention outputs from layer 1 on 0.77x" and Llama's "P V of
    # layer 1 1.23x, first RMSNorm 1.2x" were one batch's sampling noise (every tensor within
    # 10% over 16 batches; tests/real/sequence.py measures them over 16)
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


@pytest.mark.slow
def test_swin_rolled_back_windows_keep_their_variance():
    """torchvision Swin adds its shifted-window mask ``[nW, N, N]`` before the reshape that
    merges the windows with the batch: the logits are tiled over the batch (masks.keep_rows)
    so that P V keeps each window's variance, and the window reverse moves it into the token
    field (token_layout._profiled). The Slices of the roll back take the edge windows, whose
    masked regions average fewer values: 0.62-0.76x before, 0.89-1.05x now (95.0% -> 98.2%
    within 10% of every tensor)."""
    spec = SMALL["swin"]
    result = compare(exported("small", "swin"), batch_size=8, runs=spec.runs)
    slices = [i for i, (op, t) in enumerate(zip(result.ops, result.tensors))
              if op == "Slice" and "/attn/Slice_5" in t]
    assert len(slices) >= 4
    ratios = result.ratios[slices]
    assert np.all(np.abs(ratios - 1) <= 0.12), ([result.tensors[i] for i in slices], ratios)
