"""GradInit (Zhu et al. 2021, Algorithm 1; docs/methods.md): per-tensor scales that minimise
the loss after one step of the target optimiser, under a bound on the gradient norm.

Per iteration t, with p = 2 for ``sgd`` and p = 1 for ``adam``:

1. S = batch 2t; L(S; theta), g = dL/dtheta.
2. If ``|g|_p > gamma`` (constraint step): minimise the norm. Its parameter gradient is

       d|g|_2/dtheta = H g / |g|_2 = H v,  v = g / |g|_2;     d|g|_1/dtheta = H sign(g)

   (H v exact where the autodiff can, else by finite differences of gradients:
   ``gradinit_hvp``), and d/dalpha_i = <(H v)_i, p0_i>.
3. Else: the first step d = A[g] = gamma g / |g|_2 (sgd, normalised as in the paper's runs) or
   sign(g) (adam), held constant (not differentiated, as the paper's code does); theta' =
   theta - eta d. S~ = the first half of S and the second half of batch 2t+1. The objective is
   ``L(S~; theta') / eta`` with gradient ``<dL/dtheta'_i (S~), p0_i> / eta`` (dtheta'/dalpha_i
   = p0_i once d is constant).
4. Adam on alpha (constraint and objective steps keep separate first moments), clipped, then
   clamped to the lower bounds (``min_scale`` for weights, 0 for biases).

The report gives the objective, the loss and the gradient norm before and after on held-out
batches (2T and 2T+1), and the trajectory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data import Batch
from ..graph import ModelGraph
from ..plan import Plan
from ._data import LossOptions
from .options import check_values, option
from .scaleopt import (
    HVP_MODES,
    GradientOracle,
    RescaleAdam,
    ScaleSpace,
    Step,
    batch_length,
    concat_batches,
    data_details,
    finish,
    optimise,
    prepare,
    slice_batch,
)


@dataclass
class GradInitOptions(LossOptions):
    gradinit_lr: float = option(
        1e-2, "gradinit: learning rate tau of the scales (Adam). The paper tunes it per network "
              "in [1e-3, 1e-1] (1e-2 VGG-19, 5e-2 ResNet-110 without BN, 3e-3 ImageNet).", gt=0)
    gradinit_iterations: int = option(
        390, "gradinit: iterations T (the paper: one CIFAR-10 epoch at batch 128).", ge=0)
    gradinit_eta: float = option(
        0.1, "gradinit: learning rate eta of the target optimiser's first step (5e-4 for Adam "
             "on transformers).", gt=0)
    gradinit_gamma: float = option(
        1.0, "gradinit: bound gamma on the gradient norm |g|_p; above it a step minimises the "
             "norm instead (1000 for Adam on transformers, 3 on ImageNet).", gt=0)
    gradinit_alg: str = option(
        "sgd", "gradinit: target optimiser A: sgd (step gamma g/|g|_2, constraint on |g|_2) or "
               "adam (step sign(g), constraint on |g|_1).", choices=("sgd", "adam"))
    gradinit_min_scale: float = option(
        0.01, "gradinit: lower bound of the weight scales (biases: 0).", ge=0)
    gradinit_grad_clip: float = option(
        1.0, "gradinit: clip each scale's gradient to [-c, c] before Adam (0: no clipping).", ge=0)
    gradinit_hvp: str = option(
        "auto",
        "gradinit: Hessian-vector products for constraint steps: exact (reverse over "
        "reverse), fd (central differences of gradients), or auto (exact where the autodiff "
        "can, else fd).",
        choices=HVP_MODES)
    seed: int = 0


# --- the objective, as small functions of alpha ----------------------------------------------


def gradient_norm(g: np.ndarray, alg: str) -> float:
    """|g|_p: p = 2 for sgd, p = 1 for adam."""
    return float(np.sum(np.abs(g))) if alg == "adam" else float(np.linalg.norm(g))


def norm_direction(g: np.ndarray, alg: str) -> np.ndarray:
    """d|g|_p/dg: g/|g|_2 (sgd), sign(g) (adam)."""
    if alg == "adam":
        return np.sign(g)
    norm = np.linalg.norm(g)
    return g / norm if norm > 0 else np.zeros_like(g)


def first_step(g: np.ndarray, alg: str, gamma: float) -> np.ndarray:
    """A[g]: gamma g/|g|_2 (sgd) or sign(g) (adam)."""
    if alg == "adam":
        return np.sign(g)
    norm = np.linalg.norm(g)
    return gamma * g / norm if norm > 0 else np.zeros_like(g)


def norm_gradient(oracle: GradientOracle, space: ScaleSpace, alpha: np.ndarray, g: np.ndarray,
                  batch: Batch, alg: str) -> np.ndarray:
    """d|g(S; theta(alpha))|_p / dalpha_i = <(H v)_i, p0_i>, v = d|g|_p/dg (constant)."""
    hv = oracle.hvp(space.theta(alpha), norm_direction(g, alg), batch)
    return space.alpha_gradient(hv)


def loss_after_step(oracle: GradientOracle, space: ScaleSpace, alpha: np.ndarray,
                    step: np.ndarray, batch: Batch, eta: float) -> tuple[float, np.ndarray]:
    """(L(S~; theta(alpha) - eta step) / eta, its alpha-gradient with ``step`` held constant:
    <dL/dtheta'_i, p0_i> / eta)."""
    loss, grad = oracle.gradient(space.theta(alpha) - eta * step, batch)
    return loss / eta, space.alpha_gradient(grad) / eta


def batch_pair(source, t: int) -> tuple[Batch, Batch]:
    """S = batch 2t; S~ = first half of S, second half of batch 2t+1 (half S's samples)."""
    first = source.batch(2 * t)
    fresh = source.batch(2 * t + 1)
    n = batch_length(first)
    half = n // 2
    return first, concat_batches(slice_batch(first, 0, half), slice_batch(fresh, half, n))


def evaluate(oracle: GradientOracle, space: ScaleSpace, alpha: np.ndarray,
             pair: tuple[Batch, Batch], options: GradInitOptions) -> dict[str, float]:
    """Loss and |g|_p on S, and the objective L(S~; theta - eta A[g]) / eta, at ``alpha``."""
    first, second = pair
    theta = space.theta(alpha)
    loss, g = oracle.gradient(theta, first)
    step = first_step(g, options.gradinit_alg, options.gradinit_gamma)
    after, _ = oracle.gradient(theta - options.gradinit_eta * step, second)
    return {"loss": loss, "grad_norm": gradient_norm(g, options.gradinit_alg),
            "loss_after_step": after, "objective": after / options.gradinit_eta}


def plan(graph: ModelGraph, options: GradInitOptions | None = None) -> Plan:
    """GradInit scales for every parameter tensor (see the module docstring)."""
    options = options or GradInitOptions()
    check_values(options)
    run = prepare(graph, options, min_scale=options.gradinit_min_scale,
                  hvp=options.gradinit_hvp)
    oracle, space, alg = run.oracle, run.space, options.gradinit_alg
    gamma, eta = options.gradinit_gamma, options.gradinit_eta

    def step(t: int, alpha: np.ndarray) -> Step:
        first, second = batch_pair(run.source, t)
        loss, g = oracle.gradient(space.theta(alpha), first)
        norm = gradient_norm(g, alg)
        if norm > gamma:
            return Step(None, norm_gradient(oracle, space, alpha, g, first, alg), norm,
                        constraint=True, metrics={"loss": loss})
        value, grad = loss_after_step(oracle, space, alpha, first_step(g, alg, gamma), second,
                                      eta)
        return Step(value, grad, norm, metrics={"loss": loss, "loss_after_step": value * eta})

    iterations = options.gradinit_iterations
    held_out = batch_pair(run.source, iterations)
    ones = np.ones(space.size)
    before = evaluate(oracle, space, ones, held_out, options)
    optimiser = RescaleAdam(space.lower, lr=options.gradinit_lr, clip=options.gradinit_grad_clip)
    alpha, trajectory = optimise(space, step, optimiser, iterations, description="gradinit")
    after = evaluate(oracle, space, alpha, held_out, options)
    norm_name = "|g|_1" if alg == "adam" else "|g|_2"
    return finish(
        "gradinit", space, alpha, trajectory,
        objective=f"L(S~; theta - eta A[g]) / eta subject to {norm_name} <= {gamma:g}",
        before=before, after=after, started=run.started,
        details={**data_details(run), "alg": alg, "lr": options.gradinit_lr, "eta": eta,
                 "gamma": gamma, "min_scale": options.gradinit_min_scale,
                 "grad_clip": options.gradinit_grad_clip,
                 "evaluation_batches": [2 * iterations, 2 * iterations + 1]},
    )
