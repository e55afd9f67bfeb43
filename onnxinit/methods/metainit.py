"""MetaInit (Dauphin & Schoenholz 2019; docs/methods.md): tune the norms of the weight tensors to
minimise the gradient quotient, with sign-SGD and momentum, on random data by default.

**Gradient quotient.** With g = dL/dtheta, h = H g, e = eps * sign(g) (sign(0) = +1, held
constant), c = g + e, and N the number of parameter elements (every parameter, as the paper's
code does):

    q = (g - h) / c - 1,        GQ = (1/N) sum_k |q_k|

**Its gradient** (derivation). Let s = sign(q) / N. Since dq_k/dg_k = 1/c_k - (g_k - h_k)/c_k^2
= (e_k + h_k)/c_k^2 and dq_k/dh_k = -1/c_k,

    dGQ/dtheta = J_g' a - J_h' b,     a = s (e + h) / c^2,   b = s / c

with J_g = H (symmetric), so J_g' a = H a; and h(theta) = H(theta) g(theta), so

    J_h' b = grad_theta (b' H(theta) g(theta)) = D3L[b, g, .] + H H b

(the first term differentiates H with g fixed, the second g with H fixed). Hence

    dGQ/dtheta = H (a - H b) - D3L[b, g, .]

computed with two Hessian-vector products (H b, then H (a - H b)) and one third-order product
for D3L (scaleopt, equations (2) and (3)): with g and h, 11 gradient passes per step. Then
dGQ/dalpha_i = <(dGQ/dtheta)_i, p0_i>.

**Products by finite differences (default).** On ReLU networks GQ jumps wherever an activation
flips (g is discontinuous there), so its almost-everywhere gradient (what exact products and
double backpropagation give) says little about steps of useful size. Central differences of
gradients at a finite step measure a gradient quotient smoothed at that step, and its gradient
(consistent with it: checked against differences in alpha) is what lowers GQ: on the
normalization-free ResNet-20 (batch 8, 6 steps, seeds 0/1/2) the fd run lowered the exact GQ
of held-out batches from 3946 to 168 and 3117 to 1663, while exact products raised GQ in two of
three seeds (3946 -> 5170, 3117 -> 13778, 3484 -> 2947). ``metainit_hvp='exact'`` is there.

**Update** (only tensors of rank >= 2, as the paper's code): for each, s = sign(dGQ/dalpha_i)
(= sign(<dGQ/dp, p>/|p|)), m = momentum m - lr s, |p| <- |p| + m, i.e. alpha_i += m / |p0_i|,
clamped below at ``min_scale`` (the paper's code has no bound; it keeps a norm positive).

The report gives GQ before and after on a held-out batch (index T) and the trajectory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..data import Batch
from ..graph import ModelGraph
from ..plan import Plan
from ._data import LossOptions
from .options import check_values, option
from .scaleopt import (
    HVP_MODES,
    GradientOracle,
    ScaleSpace,
    SignMomentum,
    Step,
    data_details,
    finish,
    optimise,
    prepare,
)


@dataclass
class MetaInitOptions(LossOptions):
    metainit_lr: float = option(
        0.1, "metainit: sign-SGD step on each weight tensor's norm.", gt=0)
    metainit_momentum: float = option(
        0.9, "metainit: momentum of the sign-SGD memory (the paper's ablations use 0.5).",
        ge=0, lt=1)
    metainit_steps: int = option(
        500, "metainit: optimisation steps, one fresh batch each (1000 in the paper's "
             "ablations).", ge=0)
    metainit_eps: float = option(
        1e-5, "metainit: damping eps of the gradient quotient's denominator g + eps sign(g).", gt=0)
    metainit_min_scale: float = option(
        0.01, "metainit: lower bound of the weight scales (keeps every norm positive).", gt=0)
    metainit_hvp: str = option(
        "fd",
        "metainit: Hessian-vector products: fd (central differences of gradients: a gradient "
        "quotient smoothed at the difference step, which is what falls on ReLU nets in "
        "float32), exact (reverse over reverse, third-order term by differences of exact "
        "products), or auto (exact where the autodiff can).",
        choices=HVP_MODES)
    seed: int = 0
    fits_data: ClassVar[bool] = False  # task-agnostic: synthetic data is the paper's setting


def is_weight(name: str, shape: tuple[int, ...]) -> bool:
    """MetaInit tunes tensors of rank >= 2 only."""
    return len(shape) >= 2


@dataclass
class Quotient:
    gq: float
    loss: float
    grad_norm: float
    grad: np.ndarray | None  # dGQ/dalpha


def gradient_quotient(oracle: GradientOracle, space: ScaleSpace, alpha: np.ndarray,
                      batch: Batch, eps: float, *, gradient: bool = True) -> Quotient:
    """GQ at theta(alpha) on ``batch`` and (``gradient``) dGQ/dalpha (module docstring)."""
    theta = space.theta(alpha)
    loss, g = oracle.gradient(theta, batch)
    h = oracle.hvp(theta, g, batch)
    e = eps * np.where(g >= 0, 1.0, -1.0)
    c = g + e
    q = (g - h) / c - 1.0
    gq = float(np.mean(np.abs(q)))
    norm = float(np.linalg.norm(g))
    if not gradient:
        return Quotient(gq, loss, norm, None)
    s = np.sign(q) / q.size
    a = s * (e + h) / c**2
    b = s / c
    hb = oracle.hvp(theta, b, batch)
    dtheta = oracle.hvp(theta, a - hb, batch) - oracle.third(theta, b, g, batch)
    return Quotient(gq, loss, norm, space.alpha_gradient(dtheta))


def plan(graph: ModelGraph, options: MetaInitOptions | None = None) -> Plan:
    """MetaInit scales for every weight tensor of rank >= 2 (see the module docstring)."""
    options = options or MetaInitOptions()
    check_values(options)
    run = prepare(graph, options, min_scale=options.metainit_min_scale, select=is_weight,
                  hvp=options.metainit_hvp)
    oracle, space, eps = run.oracle, run.space, options.metainit_eps

    def step(t: int, alpha: np.ndarray) -> Step:
        result = gradient_quotient(oracle, space, alpha, run.source.batch(t), eps)
        return Step(result.gq, result.grad, result.grad_norm, metrics={"loss": result.loss})

    steps = options.metainit_steps
    held_out = run.source.batch(steps)

    def evaluate(alpha: np.ndarray) -> dict[str, float]:
        result = gradient_quotient(oracle, space, alpha, held_out, eps, gradient=False)
        return {"gq": result.gq, "loss": result.loss, "grad_norm": result.grad_norm}

    before = evaluate(np.ones(space.size))
    optimiser = SignMomentum(space.norms, space.lower, lr=options.metainit_lr,
                             momentum=options.metainit_momentum)
    alpha, trajectory = optimise(space, step, optimiser, steps, description="metainit")
    after = evaluate(alpha)
    return finish(
        "metainit", space, alpha, trajectory,
        objective="gradient quotient GQ = mean |(g - Hg) / (g + eps sign g) - 1|",
        before=before, after=after, started=run.started,
        details={**data_details(run), "lr": options.metainit_lr,
                 "momentum": options.metainit_momentum, "eps": eps,
                 "min_scale": options.metainit_min_scale, "evaluation_batch": steps},
    )
