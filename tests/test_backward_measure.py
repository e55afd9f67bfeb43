"""The gradient measurement runs the analysis view: an inference BatchNormalization written as
arithmetic (jax2onnx's formula) is measured as the BatchNormalization node the analysis gives it
back (batch statistics), so measured and predicted gradients describe the same network.

Oracle: PyTorch float64 autograd of the network with training-mode batch normalization, on the
measurement's own seeded feeds and directions (``L = sum(out * r)``)."""

from __future__ import annotations

import numpy as np
import torch

from onnxinit.backward_measure import measure_gradients
from onnxinit.feeds import synthetic_feeds
from onnxinit.graph import load

from .test_inference_batchnorm import BETA, EPS, GAMMA, W, formula_bn, model_with

BATCH, BATCHES = 64, 3


def _torch_gradients(graph, seed: int = 0) -> dict[str, tuple[float, float]]:
    """(mean, var) of dL/dr and dL/dy pooled over the batches, in float64."""
    rng = np.random.default_rng([seed, 15])
    grads: dict[str, list[np.ndarray]] = {"r": [], "y": []}
    for b in range(BATCHES):
        x = torch.tensor(synthetic_feeds(graph, seed=seed + b)["x"], dtype=torch.float64)
        directions = torch.tensor(rng.standard_normal((BATCH, W.shape[1])))
        r = torch.relu(3.0 * x).requires_grad_(True)
        mean, var = r.mean(0), r.var(0, unbiased=False)
        y = ((r - mean) / torch.sqrt(var + EPS) * torch.tensor(GAMMA, dtype=torch.float64)
             + torch.tensor(BETA, dtype=torch.float64))
        y.retain_grad()
        (y @ torch.tensor(W, dtype=torch.float64) * directions).sum().backward()
        grads["r"].append(r.grad.numpy())
        grads["y"].append(y.grad.numpy())
    return {k: (float(np.concatenate(v).mean()), float(np.concatenate(v).var()))
            for k, v in grads.items()}


def test_gradients_are_measured_on_the_analysis_view():
    nodes, inits = formula_bn("r", "y", 2)
    graph = load(model_with(nodes, inits, (BATCH, 4)), batch_size=BATCH)
    measured, _ = measure_gradients(graph, ["r", "y"], loss="unit", batches=BATCHES,
                                    device="cpu")
    expected = _torch_gradients(graph)
    for name in ("r", "y"):
        assert np.isclose(measured[name][1], expected[name][1], rtol=1e-3), (name, measured,
                                                                            expected)
