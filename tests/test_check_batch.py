"""``check`` judges a network at the batch it trains with, not at its export's. Exported at batch
1, BatchNorm in training mode normalizes each channel over one sample's positions, so a global
pool after it keeps only what the activation adds beyond what the normalization fixed: on a
2x2 map almost nothing (MobileNet-V3-Small at batch 1, 64x64: the pooled signal 4e3 times
below its value at batch 8, and ONNXINIT002 failed the network). The oracle is onnxruntime on
the same weights exported at batch 64. Skipped without torch."""

from __future__ import annotations

import numpy as np
import pytest

from onnxinit import check
from onnxinit.analysis import analyze
from onnxinit.findings.scale import scales
from onnxinit.graph import ModelGraph
from onnxinit.measure import measurable_model
from onnxinit.runtime import make_session

from .test_check_paths import export, levels

torch = pytest.importorskip("torch")
nn = torch.nn


def _mobile_tail(head_std: float = 0.01):
    """MobileNet-V3's tail on an 8x8 input: two stride-2 Conv -> BN -> HardSwish (to a 2x2
    map), global average pool, Linear -> HardSwish -> Linear, the Linear layers initialised
    N(0, head_std^2) as torchvision initialises MobileNet's classifier (0.01)."""
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.Hardswish(),
        nn.Conv2d(32, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64), nn.Hardswish(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 256), nn.Hardswish(),
        nn.Linear(256, 10))
    for layer in module:
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, 0.0, head_std)
            nn.init.zeros_(layer.bias)
    return module


def _pool(model) -> str:
    return next(n.output[0] for n in model.graph.node if n.op_type == "GlobalAveragePool")


def _check(model):
    analysis = analyze(model)
    paths = check.paths_of(analysis)
    return analysis, paths, check.find(analysis, paths=paths)


def _measured_signal(model, tensor: str, batch: int, runs: int = 8) -> float:
    """Mean over channels of the variance over ``runs`` batches of N(0, 1) inputs."""
    session = make_session(measurable_model(ModelGraph(model), [tensor]), device="cpu", optimize=False)
    rng = np.random.default_rng(1)
    values = [session.run([tensor], {"x": rng.standard_normal((batch, 3, 8, 8)).astype(
        np.float32)})[0].reshape(batch, -1) for _ in range(runs)]
    return float(np.concatenate(values).astype(np.float64).var(0).mean())


def test_batch_one_export_judged_at_the_training_batch():
    """The batch-1 export passes (it failed ONNXINIT002 before, signal 1e-7 at the classifier's
    HardSwish), and its judged pooled signal is what onnxruntime measures on the same weights
    exported at batch 64, within 2x (0.97x; 5e-4 of it before)."""
    one = export(_mobile_tail(), 1, 3, 8, 8)
    analysis, paths, findings = _check(one)
    assert not check.failed(findings), levels(findings)
    pool = _pool(one)
    judged = scales(analysis, paths)[pool].signal / paths.pooling[pool]  # white-noise inputs
    measured = _measured_signal(export(_mobile_tail(), 64, 3, 8, 8), pool, 64)
    assert 0.5 < judged / measured < 2.0, (judged, measured)


def test_batch_one_export_with_a_dead_head_still_fails():
    """The correction is the export batch's alone: the same network with its classifier's
    first layer initialised 1e-5 (signal about 1e-8 at every batch) still fails ONNXINIT002,
    exported at batch 1 and at batch 64."""
    for batch in (1, 64):
        _, _, findings = _check(export(_mobile_tail(head_std=1e-5), batch, 3, 8, 8))
        assert ("ONNXINIT002", "error") in levels(findings), (batch, levels(findings))
