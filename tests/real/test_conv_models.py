"""Predictions on real convolutional networks (torchvision, random initialization, exported in
training mode as the README says) against onnxruntime measurements at batch 8: at least 95% of
the float activation tensors within 10% of the measured variance, all within 2x, every one
predicted, none NaN or infinite (issue 10).

Input sizes are the smallest that keep the effect each model is here for: 64x64 for most; the
normalization-free ResNet-50 at 96x96, where its first two stages hold more than 65,536 cells
per tensor (the per-position limit that made deep no-norm ResNets drift before position
classes). Models with stochastic depth (EfficientNet, ConvNeXt) are measured over 16 batches of 8
in one session (fresh masks each run) and their mask tensors left out (``tests/real/compare``).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("torchvision")

from tests.real.compare import compare  # noqa: E402
from tests.real.exports import exported  # noqa: E402

# squeeze-excite global pools: the depthwise conv's non-Gaussian energy correlation is modelled
# (rules/pool_skewness.py), and so is the energy every channel and position of a sample shares
# (rules/sample_energy.py: a per-sample scale seeded by the realized energies a 1x1 conv mixes,
# amplified by each HardSwish/SiLU, with the per-sample mean offset that moves with it).
# What is left: the projection convs after a gate seed 1.5-2x the shared energy the diagonal
# term gives and a depthwise conv's local energy fluctuation is 0.65-0.8 of the measured.
# Measured at 64x64: 93.0% (MobileNetV3, was 82.8%; 96.8% over 16 batches, was 90.4%) and
# 89.3-91.6% (EfficientNet, 16 batches, was 88.3-91.3% on the same three measurements; its
# stochastic-depth masks are now seeded in the measurement, tests/real/compare.seeded: 90.9%
# every run) of the tensors within 10%, every one within 2x. strict: a pass is reported.
# With the depthwise pairs carried past the pool (rules/pool_pairs.py): 94.3% -> 91.1%
# (MobileNetV3, one batch: threshold crossings; over 16 batches 98.7% either way, its pools'
# mean |log ratio| 0.054 -> 0.047) and 92.3% -> 91.6% (EfficientNet).
# EfficientNet's stochastic-depth masks are now factors of their own (rules/sample_masks.py):
# 84.2% -> 86.6% at 224 and 85.9% -> 90.3% at 112 (benchmarks/real_exports.py), but 91.6% ->
# 86.6% here: its last stages are 2x2 maps, where the shared energy overshoots and the pools
# reach 1.1-1.3x (the missing mask energy hid that before).
# A BatchNorm on those small maps divides by a batch energy that holds each sample's own and
# lowers the shared energy 11-20% (rules/batch_energy.py): 86.6% -> 93.3% here (16 batches);
# the squeeze-excite convs read the pooled channels' covariance through that energy
# (rules/pooled_energy.py): 95.3%, so EfficientNet-B0 is no longer expected to fail
# (MobileNetV3-small 93.6% -> 93.0% on its one batch; 98.7% over 16 either way).
_SQUEEZE_EXCITE = pytest.mark.xfail(strict=True, reason="squeeze-excite pools under-predicted "
                                    "(a gate's projection seeds more shared energy than modelled)")

# (model, input size, measured batches of 8)
CASES = [
    ("resnet18", 64, 1),
    ("resnet50_nonorm", 96, 1),
    ("vgg11", 64, 1),
    ("vgg11_bn", 64, 1),
    ("densenet121", 64, 1),
    # fire modules: the next squeeze conv reads the concat's channel covariance, each expand
    # branch's block and their cross block through the shared squeeze (rules/concat_field.py):
    # 39.4% -> 100% within 10% (the squeeze convs' channels read as independent before)
    ("squeezenet1_0", 64, 1),
    ("regnet_y_400mf", 64, 1),
    pytest.param("mobilenet_v3_small", 64, 1, marks=_SQUEEZE_EXCITE),
    ("efficientnet_b0", 64, 16),
    ("convnext_tiny", 64, 16),
    # decoders (tests/real/decoders.py): U-Net's bilinear upsampling of correlated maps was
    # measured on independent samples (94.5%: its Resize outputs 0.87-0.94x); FCN-8s' bilinear
    # ConvTransposes read their input's correlation (0.94x before)
    ("unet_bilinear", 32, 1),
    ("fcn8s", 64, 1),
    # GroupNorm written out (tests/real/group_norm_models.py: a view's mean and variance): the
    # statistics of a Conv that reads a GroupNorm'd map spread over the groups as that Conv's
    # per-channel variances do, which read the input's patch covariance (92.2% before,
    # rules/group_conv_variance.py)
    ("gn_blocks_handwritten", 32, 8),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,size,runs", CASES)
def test_predictions_match_measurements(name, size, runs):
    result = compare(exported(name, size), batch_size=8, runs=runs)
    print(f"\n{name} {size}x{size}: {len(result.rows)} tensors, "
          f"{result.within_10:.1%} within 10%, {result.within_2x:.1%} within 2x, "
          f"coverage {result.coverage:.0%}, analyze {result.analyze_s:.1f} s")
    for line in result.worst(5):
        print("  ", line)
    assert len(result.rows) >= 25  # VGG-11 has 29 float activations, the others more
    assert result.coverage == 1.0, [r.tensor for r in result.rows if r.predicted is None]
    assert all(np.isfinite(r.predicted) for r in result.rows)
    assert result.within_2x == 1.0, result.worst(5)
    assert result.within_10 >= 0.95, result.worst(10)
