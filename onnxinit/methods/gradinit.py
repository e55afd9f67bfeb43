"""GradInit (Zhu et al. 2021, Algorithm 1; docs/methods.md): per-tensor scales that minimise
the loss after one step of the target optimiser, under a bound on the gradient norm.

Per iteration t, with p = 2 for ``sgd`` and p = 1 for ``adam``:

1. S = batch 2t; L(S; theta), g = dL/dtheta.
2. If ``|g|_p > gamma`` (constraint step): minimise the norm. Its parameter gradient is

       d|g|_2/dtheta = H g / |g|_2 = H v,  v = g / |g|_2;     d|g|_1/dtheta = H sign(g)

   and d/dalpha_i = <(H v)_i, p0_i>. Exact where the autodiff can (``gradinit_hvp``): one run
   of the gradient graph extended with |g|_p and differentiated again gives L, g, |g|_p and
   d|g|_p/dtheta together, as the paper's double backward does; else H v by finite differences
   of gradients. The norm program runs in two stages (:mod:`onnxinit.autodiff.staged`): the
   first is step 1's gradient pass, the second runs on a constraint step only and reuses the
   first's tensors, as the paper's code reuses its graph (``create_graph=True``).
3. Else: the first step d = A[g] = gamma g / |g|_2 (sgd, normalised as in the paper's runs) or
   sign(g) (adam), held constant (not differentiated, as the paper's code does); theta' =
   theta - eta d. S~ = the first half of S and the second half of batch 2t+1. The objective is
   ``L(S~; theta') / eta`` with gradient ``<dL/dtheta'_i (S~), p0_i> / eta`` (dtheta'/dalpha_i
   = p0_i once d is constant).
4. Adam on alpha (constraint and objective steps keep separate first moments), clipped, then
   clamped to the lower bounds (``min_scale`` for weights, 0 for biases).

The report gives the objective, the loss and the gradient norm on held-out batch pairs (2T + 2k,
2T + 2k + 1 for k < ``held_out_batches``) before, at the checkpoints and at the kept scales (scaleopt: the
best-measured scales are kept), and the trajectory.

The paper's code takes the first step as eta g / |g|_2; with its gamma = 1 that is the same
step as the paper's text, eta gamma g / |g|_2, which is what this module follows for any gamma.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..data import Batch, batch_length, concat_batches, slice_batch
from ..graph import ModelGraph
from ..lazy import lazy_module
from ..plan import Plan
from .options import check_values, option
from .optimisers import RescaleAdam
from .oracle import HVP_MODES, GradientOracle
from .scaleopt import (
    Assessment,
    GradientOptions,
    Step,
    data_details,
    finish,
    optimise,
    prepare,
)
from .scales import ScaleSpace

if TYPE_CHECKING:
    from ..autodiff.higher_order import DerivedGraph

_higher_order = lazy_module("onnxinit.autodiff.higher_order")  # imported when the method runs


@dataclass
class GradInitOptions(GradientOptions):
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
        "gradinit: second derivatives of constraint steps: exact (reverse over reverse), fd "
        "(central differences of gradients), or auto (exact where the autodiff can, else fd).",
        choices=HVP_MODES)


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


def norm_graph(alg: str) -> Callable:
    """The gradient graph extended with phi = |g|_p and differentiated again:
    d phi/d theta = H d|g|_p/dg."""

    def build(emitter, roles, elem):
        grads = [v for k, v in roles.items() if k.startswith("grad:")]
        if alg == "adam":
            terms = [emitter.node("ReduceSum", [emitter.node("Abs", [g])], keepdims=0)
                     for g in grads]
        else:
            terms = [emitter.node("ReduceSum", [emitter.node("Mul", [g, g])], keepdims=0)
                     for g in grads]
        total = emitter.node("Sum", terms) if len(terms) > 1 else terms[0]
        return total if alg == "adam" else emitter.node("Sqrt", [total])

    def make(graph) -> DerivedGraph:
        return _higher_order.derive(graph, build)

    return make


def norm_gradient(oracle: GradientOracle, space: ScaleSpace, alpha: np.ndarray, g: np.ndarray,
                  batch: Batch, alg: str) -> np.ndarray:
    """d|g(S; theta(alpha))|_p / dalpha_i = <(H v)_i, p0_i>, v = d|g|_p/dg (constant): from
    the exact norm program where there is one (the program a constraint step usually runs:
    one second-order program is built, not two), else from the product H v."""
    exact = oracle.derived(f"gradinit-norm-{alg}", batch_length(batch), norm_graph(alg),
                           scaled=True)
    if exact is not None:
        out = oracle.run(exact, space.theta(alpha), batch, [f"dphi:{n}" for n in oracle.wrt],
                         scales=space.tensor_scales(alpha))
        return space.alpha_gradient(oracle.join(out, "dphi"))
    hv = oracle.hvp(space.theta(alpha), norm_direction(g, alg), batch)
    return space.alpha_gradient(hv)


def gradient_then_norm(oracle: GradientOracle, space: ScaleSpace, alpha: np.ndarray,
                       batch: Batch, alg: str, theta: np.ndarray | None = None
                       ) -> tuple[float, np.ndarray, Callable | None]:
    """(L, g, a function giving d|g|_p/dalpha) at alpha on ``batch``: stage 1 of the exact norm
    program (a gradient pass) now, its stage 2 when the function is called
    (:mod:`onnxinit.autodiff.staged`); where the program cannot be staged, a gradient pass and
    :func:`norm_gradient`. ``theta``: ``space.theta(alpha)`` where the caller has it."""
    theta = space.theta(alpha) if theta is None else theta
    staged = oracle.staged(f"gradinit-norm-{alg}", batch_length(batch), norm_graph(alg),
                           scaled=True, along_values=True)
    if staged is None:
        loss, g = oracle.gradient(theta, batch)
        return loss, g, lambda: norm_gradient(oracle, space, alpha, g, batch, alg)
    loss, g, carry = oracle.first_stage(staged, theta, batch,
                                        scales=space.tensor_scales(alpha))
    return loss, g, lambda: oracle.rest_along_values(staged, carry)[space.index]


def gradient_and_norm_gradient(oracle: GradientOracle, space: ScaleSpace, alpha: np.ndarray,
                               batch: Batch, alg: str):
    """(L, g, d|g|_p/dalpha) at alpha on ``batch`` from both stages of the exact norm program;
    where the autodiff cannot build it, (L, g, None) from a gradient pass."""
    staged = oracle.staged(f"gradinit-norm-{alg}", batch_length(batch), norm_graph(alg),
                           scaled=True, along_values=True)
    loss, g, later = gradient_then_norm(oracle, space, alpha, batch, alg)
    return loss, g, None if staged is None else later()


def loss_after_step(oracle: GradientOracle, space: ScaleSpace, alpha: np.ndarray,
                    step: np.ndarray, batch: Batch, eta: float,
                    theta: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """(L(S~; theta(alpha) - eta step) / eta, its alpha-gradient with ``step`` held constant:
    <dL/dtheta'_i, p0_i> / eta, from the oracle's directional program: no convolution weight
    gradient is formed). ``theta``: ``space.theta(alpha)`` where the caller has it."""
    theta = space.theta(alpha) if theta is None else theta
    loss, inner = oracle.directional(theta - eta * step, batch)
    return loss / eta, inner[space.index] / eta


def batch_pair(source, t: int) -> tuple[Batch, Batch]:
    """S = batch 2t; S~ = first half of S, second half of batch 2t+1 (half S's samples)."""
    first = source.batch(2 * t)
    fresh = source.batch(2 * t + 1)
    n = batch_length(first)
    half = n // 2
    return first, concat_batches(slice_batch(first, 0, half), slice_batch(fresh, half, n))


def assessment(oracle: GradientOracle, space: ScaleSpace, alpha: np.ndarray,
               pairs: list[tuple[Batch, Batch]], options: GradInitOptions) -> Assessment:
    """Mean over ``pairs`` of the loss and |g|_p on S and of the objective
    L(S~; theta - eta A[g]) / eta; ranked feasible (mean |g|_p <= gamma) first, by objective,
    then by |g|_p."""
    alg, eta, gamma = options.gradinit_alg, options.gradinit_eta, options.gradinit_gamma
    theta = space.theta(alpha)
    rows = []
    for first, second in pairs:
        loss, g = oracle.gradient(theta, first)
        after, _ = oracle.gradient(theta - eta * first_step(g, alg, gamma), second)
        rows.append((loss, gradient_norm(g, alg), after))
    loss, norm, after = (float(np.mean(c)) for c in zip(*rows))
    values = {"loss": loss, "grad_norm": norm, "loss_after_step": after,
              "objective": after / eta}
    return Assessment(values, (0, after / eta) if norm <= gamma else (1, norm))


def plan(graph: ModelGraph, options: GradInitOptions | None = None, *,
         observe: Callable[[int, np.ndarray], None] | None = None) -> Plan:
    """GradInit scales for every parameter tensor (see the module docstring). ``observe(t,
    alpha)`` sees the scales after every iteration."""
    options = options or GradInitOptions()
    check_values(options)
    run = prepare(graph, options, min_scale=options.gradinit_min_scale,
                  hvp=options.gradinit_hvp)
    oracle, space, alg = run.oracle, run.space, options.gradinit_alg
    gamma, eta = options.gradinit_gamma, options.gradinit_eta

    def step(t: int, alpha: np.ndarray) -> Step:
        first, second = batch_pair(run.source, t)
        theta = space.theta(alpha)
        loss, g, norm_gradient_now = gradient_then_norm(oracle, space, alpha, first, alg, theta)
        norm = gradient_norm(g, alg)
        if norm > gamma:
            return Step(None, norm_gradient_now(), norm, constraint=True, metrics={"loss": loss})
        value, grad = loss_after_step(oracle, space, alpha, first_step(g, alg, gamma), second,
                                      eta, theta)
        return Step(value, grad, norm, metrics={"loss": loss, "loss_after_step": value * eta})

    iterations = options.gradinit_iterations
    pairs = [batch_pair(run.source, iterations + k) for k in range(options.held_out_batches)]
    optimiser = RescaleAdam(space.lower, lr=options.gradinit_lr, clip=options.gradinit_grad_clip)
    outcome = optimise(space, step, optimiser, iterations, description="gradinit",
                       assess=(lambda a: assessment(oracle, space, a, pairs, options)) if pairs
                       else None, checkpoints=options.checkpoints, observe=observe)
    norm_name = "|g|_1" if alg == "adam" else "|g|_2"
    return finish(
        "gradinit", space, outcome,
        objective=f"L(S~; theta - eta A[g]) / eta subject to {norm_name} <= {gamma:g}",
        started=run.started,
        details={**data_details(run), "alg": alg, "lr": options.gradinit_lr, "eta": eta,
                 "gamma": gamma, "min_scale": options.gradinit_min_scale,
                 "grad_clip": options.gradinit_grad_clip,
                 "held_out_batches": [2 * (iterations + k) + i for k in range(len(pairs))
                                      for i in (0, 1)]},
        advice=f"a larger --batch-size (at {run.source.batch_size} samples the change one step "
               "makes to the loss is mostly batch-to-batch noise; the paper uses 128), a lower "
               "--gradinit-lr or fewer --gradinit-iterations",
    )
