"""Pieces the PyTorch references share: per-tensor scales with autograd, the papers' Adam on
scales, and batches as torch tensors. Written from the papers (GradInit Section 3 and its Appendix
A; NIO reuses GradInit's optimiser), not from onnxinit's code.
"""

from __future__ import annotations

import math

import numpy as np
import torch


class Scales:
    """theta_i = alpha_i * p0_i for every tensor in ``scaled`` (alpha_i a leaf scalar, starting at
    1); the other tensors stay at p0. Tensors of norm 0 cannot be rescaled and are left out."""

    def __init__(self, params: dict[str, torch.Tensor], scaled):
        # leaves that require grad: every tensor is differentiated, scaled or not
        self.p0 = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
        self.names = [n for n in scaled if float(self.p0[n].detach().norm()) > 0]
        self.alpha = {n: torch.ones((), dtype=self.p0[n].dtype, requires_grad=True)
                      for n in self.names}

    def theta(self) -> dict[str, torch.Tensor]:
        return {n: self.alpha[n] * p if n in self.alpha else p for n, p in self.p0.items()}

    def alphas(self) -> list[torch.Tensor]:
        return [self.alpha[n] for n in self.names]

    def values(self) -> np.ndarray:
        return np.array([float(self.alpha[n].detach()) for n in self.names])

    def set(self, values) -> None:
        with torch.no_grad():
            for n, v in zip(self.names, values):
                self.alpha[n].fill_(float(v))


class PaperAdam:
    """Adam on the scales as GradInit describes it (betas 0.9/0.999, eps 1e-8, every scale's
    gradient clamped to [-clip, clip], scales clamped at their lower bound after the step). The
    authors' optimiser keeps one first moment for constraint steps and one for objective steps,
    each bias-corrected by its own step count, and one second moment over all steps. Plain
    Python floats per scale, one scale at a time."""

    def __init__(self, lower: list[float], lr: float, clip: float = 1.0,
                 betas=(0.9, 0.999), eps=1e-8):
        self.lower, self.lr, self.clip, self.betas, self.eps = lower, lr, clip, betas, eps
        self.state = [{"m": {True: 0.0, False: 0.0}, "n": {True: 0, False: 0}, "v": 0.0}
                      for _ in lower]

    def step(self, values: list[float], grads: list[float], constraint: bool) -> list[float]:
        b1, b2 = self.betas
        out = []
        for value, grad, lower, s in zip(values, grads, self.lower, self.state):
            if self.clip > 0:
                grad = max(-self.clip, min(self.clip, grad))
            s["n"][constraint] += 1
            s["m"][constraint] = b1 * s["m"][constraint] + (1 - b1) * grad
            s["v"] = b2 * s["v"] + (1 - b2) * grad * grad
            steps = s["n"][True] + s["n"][False]
            denominator = math.sqrt(s["v"] / (1 - b2 ** steps)) + self.eps
            value = value - self.lr / (1 - b1 ** s["n"][constraint]) * s["m"][constraint] \
                / denominator
            out.append(max(value, lower))
        return out


def as_torch(batch, dtype=torch.float64):
    """(inputs, labels) of an onnxinit Batch (one graph input) as torch tensors."""
    (x,) = batch.feeds.values()
    x = torch.from_numpy(np.asarray(x))
    if x.is_floating_point():
        x = x.to(dtype)
    return x, torch.from_numpy(np.asarray(batch.labels)).long()


def cross_entropy(forward, theta, x, y, reduction="mean"):
    return torch.nn.functional.cross_entropy(forward(theta, x), y, reduction=reduction)


def lower_bounds(scales: Scales, kinds: dict[str, str], min_scale: float) -> list[float]:
    """GradInit's bounds: ``min_scale`` for weights, 0 for biases."""
    return [0.0 if kinds[n] == "bias" else min_scale for n in scales.names]
