"""Each method's objective recomputed in PyTorch (float64) from a model's weights on given
batches, sharing no code with onnxinit's methods: the rescaled ONNX file is read back into the
twin's torch forward. Used to check that a method improved what it optimises, on fresh batches.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from onnxinit.writeback import apply_plan

from .common import as_torch, cross_entropy
from .metainit_ref import gradient_quotient
from .nio_ref import gradient_cosine


def rescaled(twin, plan):
    """The twin with ``plan`` applied to its ONNX model (what ``rescale`` writes)."""
    return dataclasses.replace(twin, model=apply_plan(twin.model, plan))


def _leaves(twin):
    return {n: p.requires_grad_(True) for n, p in twin.parameters(torch.float64).items()}


def gradinit_objective(twin, pairs, *, eta=0.1, gamma=1.0, alg="sgd") -> dict:
    """Means over (S, S~) pairs of |g(S)|_p and L(S~; theta - eta A[g(S)]) / eta."""
    theta = _leaves(twin)
    norms, objectives = [], []
    for s, s_tilde in pairs:
        x, y = as_torch(s)
        grads = torch.autograd.grad(cross_entropy(twin.forward, theta, x, y), list(theta.values()))
        flat = torch.cat([g.reshape(-1) for g in grads])
        norm = float(flat.abs().sum() if alg == "adam" else flat.norm())
        steps = [g.sign() if alg == "adam" else gamma * g / flat.norm() for g in grads]
        moved = {n: p.detach() - eta * d for (n, p), d in zip(theta.items(), steps)}
        with torch.no_grad():
            after = float(cross_entropy(twin.forward, moved, *as_torch(s_tilde)))
        norms.append(norm)
        objectives.append(after / eta)
    return {"grad_norm": float(np.mean(norms)), "objective": float(np.mean(objectives))}


def metainit_objective(twin, batches, *, eps=1e-5) -> dict:
    """Mean gradient quotient over ``batches`` (exact double backward)."""
    theta = _leaves(twin)
    values = [float(gradient_quotient(twin.forward, theta, *as_torch(b), eps)[0].detach())
              for b in batches]
    return {"gq": float(np.mean(values))}


def nio_objective(twin, batches, *, splits=4, overlap=0.2, gn_mul=1.0) -> dict:
    """Means over ``batches`` of GradCosine, the mean sub-batch gradient norm and
    F = GradCosine + gn_mul * sum of sub-batch gradient norms."""
    theta = _leaves(twin)
    rows = []
    for batch in batches:
        norms, cosine = gradient_cosine(twin, theta, *as_torch(batch), splits, overlap,
                                        create_graph=False)
        gc = float(cosine)
        rows.append((gc, float(norms.mean()), gc + gn_mul * float(norms.sum())))
    gc, gnorm, value = (float(np.mean(c)) for c in zip(*rows))
    return {"gradcosine": gc, "gnorm": gnorm, "objective": value}


def constrained_better(before: dict, after: dict, *, key: str, norm: str, bound: float,
                       maximise: bool = False) -> bool:
    """Whether ``after`` is better than ``before`` for a bound-constrained objective: within
    the bound with a better objective (or newly within it), or both outside and closer."""
    sign = -1.0 if maximise else 1.0
    inside_before, inside_after = before[norm] <= bound, after[norm] <= bound
    if inside_after and not inside_before:
        return True
    if inside_after and inside_before:
        return sign * after[key] < sign * before[key]
    return not inside_before and after[norm] < before[norm]
