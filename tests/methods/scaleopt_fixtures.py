"""Shared pieces of the scale-optimisation tests: a tiny float64 run and central differences
in alpha-space."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from onnxinit.graph import load
from onnxinit.methods.gradinit import GradInitOptions
from onnxinit.methods.scaleopt import Run, prepare
from tests.models import mlp

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
RESNET = SAMPLES / "resnet20_nobn.onnx"
MLP50 = SAMPLES / "tanh_mlp50.onnx"


def tiny_run(*, batch_size: int = 12, hvp: str = "exact", select=None, seed: int = 0) -> Run:
    """A 5-7-6-4 tanh MLP with biases, float64 gradient passes on the CPU, synthetic data."""
    graph = load(mlp([5, 7, 6, 4], activation="Tanh", seed=seed), batch_size=batch_size)
    return prepare(graph, GradInitOptions(seed=seed, precision="float64"), min_scale=0.01,
                   select=select, device="cpu", hvp=hvp)


def random_alpha(run: Run, seed: int = 1) -> np.ndarray:
    """Scales away from 1, so the checks do not rely on alpha = 1."""
    return 1.0 + 0.2 * np.random.default_rng(seed).standard_normal(run.space.size)


def central_difference(f, alpha: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """(f(alpha + h e_i) - f(alpha - h e_i)) / 2h for every i."""
    out = np.empty(len(alpha))
    for i in range(len(alpha)):
        e = np.zeros(len(alpha))
        e[i] = h
        out[i] = (f(alpha + e) - f(alpha - e)) / (2 * h)
    return out


def assert_gradient_matches(analytic: np.ndarray, numeric: np.ndarray, rtol: float = 1e-6):
    scale = np.max(np.abs(numeric))
    assert scale > 1e-6, "the objective does not depend on alpha: the check would be empty"
    error = np.max(np.abs(analytic - numeric)) / scale
    assert error < rtol, f"alpha-gradient off by {error:.2e} (relative to max |dF/dalpha|)"
