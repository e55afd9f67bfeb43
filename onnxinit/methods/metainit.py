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

**Exact (default).** Where the autodiff can, GQ and its gradient come from one program: the
gradient graph extended with ``|g|^2 / 2`` and differentiated again gives ``H g`` (the paper's
double backward), and that graph extended with GQ and differentiated a third time gives
dGQ/dtheta, the quantity the paper's ``gq.backward()`` computes. Elsewhere (``metainit_hvp``
``fd``, or an op without a second-order rule) the formula above runs on central differences of
gradient passes (oracle.py, (2) and (3)). The differences measure a gradient quotient smoothed
at the difference step; that is a different objective from the paper's (kept as an option: on
ReLU networks in float32 the exact quotient jumps wherever an activation flips, and its
almost-everywhere gradient can say little about steps of useful size).

**Default step.** The paper's code takes lr 0.1 with momentum 0.9: a norm moves by up to
lr / (1 - momentum) = 1 per step, an absolute amount. A He-initialised weight of C_out output
channels has norm about sqrt(2 C_out): 11-64 over ResNet-50's 64-2048 channels (the largest
network of the paper), so there a step is a few percent of a norm at most. PyTorch's default
init gives a 16-64 channel network norms of sqrt(C_out / 3) = 1.8-4.6, where 0.1 moves a norm
by up to half of it per step and the norms swing (the ResNet-20 training benchmark kept a
branch at the 0.01 bound and trained to 75.6% where the default init reaches 84.7%). The
default here is 0.01, the same order of relative step on these sizes (measured: GQ on held-out
batches 0.81 -> 0.70 instead of 0.72, 84.4% after training; docs/methods.md).

**Update** (only tensors of rank >= 2, as the paper's code): for each, s = sign(dGQ/dalpha_i)
(= sign(<dGQ/dp, p>/|p|)), m = momentum m - lr s, |p| <- |p| + m, i.e. alpha_i += m / |p0_i|,
clamped below at ``min_scale`` (the paper's code has no bound; it keeps a norm positive).

The report gives GQ on held-out batches T, T + 1, ... before, at the checkpoints and at the kept
scales (scaleopt: the best-measured scales are kept), and the trajectory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ..data import Batch, batch_length
from ..graph import ModelGraph
from ..lazy import lazy_module
from ..plan import Plan
from .options import check_values, option
from .optimisers import SignMomentum
from .oracle import HVP_MODES, GradientOracle
from .scaleopt import (
    Assessment,
    GradientOptions,
    Step,
    data_details,
    finish,
    held_out,
    optimise,
    prepare,
)
from .scales import ScaleSpace

if TYPE_CHECKING:
    from ..autodiff.higher_order import DerivedGraph

_higher_order = lazy_module("onnxinit.autodiff.higher_order")  # imported when the method runs
log = logging.getLogger(__name__)

# measured by benchmarks/training_benefit.py (docs/methods.md, "Training from the rescaled
# weights"): what a user should expect of the rescaled network
TRAINING_CAVEAT = (
    "metainit: a lower gradient quotient did not mean better training in our benchmarks: "
    "rescaled by MetaInit, ResNet-20 without normalization trained to 80%% where its default "
    "init reaches 86%%, and after Kaiming one run in three did not train (%s); it helped only "
    "where the starting init barely trained. Train the model with and without these scales "
    "before keeping them.")


@dataclass
class MetaInitOptions(GradientOptions):
    metainit_lr: float = option(
        0.01, "metainit: sign-SGD step on each weight tensor's norm, an absolute amount (the "
              "paper's code: 0.1, for networks as wide as ResNet-50, whose weight norms are "
              "10-60; on 16-64 channel nets with norms of 2-5 that swings them).", gt=0)
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
        "auto",
        "metainit: derivatives of the gradient quotient: exact (H g and dGQ/dtheta by "
        "differentiating the gradient graph twice more, as the paper's double and triple "
        "backward), fd (central differences of gradients: a quotient smoothed at the "
        "difference step), or auto (exact where the autodiff can, else fd).",
        choices=HVP_MODES)
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


def quotient(g: np.ndarray, h: np.ndarray, eps: float) -> float:
    """GQ = mean |(g - h) / (g + eps sign g) - 1| (sign(0) = +1)."""
    return float(np.mean(np.abs((g - h) / (g + eps * np.where(g >= 0, 1.0, -1.0)) - 1.0)))


def _half_square(emitter, roles, elem):
    grads = [v for k, v in roles.items() if k.startswith("grad:")]
    terms = [emitter.node("ReduceSum", [emitter.node("Mul", [g, g])], keepdims=0) for g in grads]
    total = emitter.node("Sum", terms) if len(terms) > 1 else terms[0]
    return emitter.node("Mul", [total, emitter.constant(0.5, elem, "half")])


def curvature_graph(graph) -> DerivedGraph:
    """The gradient graph extended with |g|^2 / 2 and differentiated again: role
    ``dhalf_square:<param>`` is H g."""
    return _higher_order.derive(graph, _half_square, role="half_square")


def quotient_graph(eps: float, count: int) -> Callable:
    """:func:`curvature_graph` extended with GQ(g, H g) (``count``: N, the parameter elements)
    and differentiated a third time: role ``gq`` is GQ, ``dgq:<param>`` its gradient."""

    def build(emitter, roles, elem):
        params = [k[len("grad:"):] for k in roles if k.startswith("grad:")]
        plus, minus = emitter.constant(eps, elem, "eps"), emitter.constant(-eps, elem, "neg_eps")
        zero, one = emitter.constant(0.0, elem, "zero"), emitter.constant(1.0, elem, "one")
        terms = []
        for name in params:
            g, h = roles[f"grad:{name}"], roles[f"dhalf_square:{name}"]
            damping = emitter.node("Where", [emitter.node("GreaterOrEqual", [g, zero]), plus,
                                             minus])
            q = emitter.node("Sub", [emitter.node("Div", [emitter.node("Sub", [g, h]),
                                                          emitter.node("Add", [g, damping])]),
                                     one])
            terms.append(emitter.node("ReduceSum", [emitter.node("Abs", [q])], keepdims=0))
        total = emitter.node("Sum", terms) if len(terms) > 1 else terms[0]
        return emitter.node("Mul", [total, emitter.constant(1.0 / count, elem, "inverse_count")])

    def make(graph) -> DerivedGraph:
        return _higher_order.derive(curvature_graph(graph), build, role="gq")

    return make


def _exact_quotient(oracle, space, alpha, batch, eps, gradient):
    """GQ (and dGQ/dalpha) from one run of the exact programs (with scaled convolutions:
    theta = theta(alpha)), or None where the autodiff cannot build them."""
    n = batch_length(batch)
    wrt = oracle.wrt
    if gradient:
        program = oracle.derived("metainit-gq", n, quotient_graph(eps, oracle.layout.size),
                                 scaled=True)
        roles = ["loss", "gq", *(f"grad:{p}" for p in wrt), *(f"dgq:{p}" for p in wrt)]
    else:
        program = oracle.derived("metainit-hg", n, curvature_graph, scaled=True)
        roles = ["loss", *(f"grad:{p}" for p in wrt), *(f"dhalf_square:{p}" for p in wrt)]
    if program is None:
        return None
    out = oracle.run(program, space.theta(alpha), batch, roles,
                     scales=space.tensor_scales(alpha))
    g = oracle.join(out, "grad")
    norm = float(np.linalg.norm(g))
    if gradient:
        return Quotient(float(out["gq"]), float(out["loss"]), norm,
                        space.alpha_gradient(oracle.join(out, "dgq")))
    return Quotient(quotient(g, oracle.join(out, "dhalf_square"), eps), float(out["loss"]),
                    norm, None)


def gradient_quotient(oracle: GradientOracle, space: ScaleSpace, alpha: np.ndarray,
                      batch: Batch, eps: float, *, gradient: bool = True) -> Quotient:
    """GQ at theta(alpha) on ``batch`` and (``gradient``) dGQ/dalpha (module docstring): exact
    where the autodiff can, else by the formula on difference products."""
    exact = _exact_quotient(oracle, space, alpha, batch, eps, gradient)
    if exact is not None:
        return exact
    theta = space.theta(alpha)
    loss, g = oracle.gradient(theta, batch)
    h = oracle.hvp(theta, g, batch)
    gq = quotient(g, h, eps)
    norm = float(np.linalg.norm(g))
    if not gradient:
        return Quotient(gq, loss, norm, None)
    e = eps * np.where(g >= 0, 1.0, -1.0)
    c = g + e
    s = np.sign((g - h) / c - 1.0) / g.size
    a = s * (e + h) / c**2
    b = s / c
    hb = oracle.hvp(theta, b, batch)
    dtheta = oracle.hvp(theta, a - hb, batch) - oracle.third(theta, b, g, batch)
    return Quotient(gq, loss, norm, space.alpha_gradient(dtheta))


def assessment(oracle: GradientOracle, space: ScaleSpace, alpha: np.ndarray,
               batches: list[Batch], eps: float) -> Assessment:
    """Mean GQ, loss and gradient norm over the held-out ``batches``, ranked by GQ."""
    rows = [gradient_quotient(oracle, space, alpha, b, eps, gradient=False) for b in batches]
    values = {"gq": float(np.mean([r.gq for r in rows])),
              "loss": float(np.mean([r.loss for r in rows])),
              "grad_norm": float(np.mean([r.grad_norm for r in rows]))}
    return Assessment(values, (0, values["gq"]))


def lower_rate_advice(norms: np.ndarray, lr: float, momentum: float) -> str:
    """What to try when no step beat the model's own scales: sign-SGD with momentum moves a
    norm by up to ``lr / (1 - momentum)`` per step, an absolute amount (the paper's lr 0.1 was
    set on networks whose weight norms are tens); on small norms that overshoots."""
    reach = lr / (1.0 - momentum)
    return (f"a lower --metainit-lr (e.g. {lr / 10:g}): each step moves a weight norm by up to "
            f"lr/(1 - momentum) = {reach:.3g}, against weight norms of {float(np.min(norms)):.3g}"
            f" to {float(np.max(norms)):.3g} in this model")


def plan(graph: ModelGraph, options: MetaInitOptions | None = None, *,
         observe: Callable[[int, np.ndarray], None] | None = None) -> Plan:
    """MetaInit scales for every weight tensor of rank >= 2 (see the module docstring).
    ``observe(t, alpha)`` sees the scales after every step."""
    options = options or MetaInitOptions()
    check_values(options)
    run = prepare(graph, options, min_scale=options.metainit_min_scale, select=is_weight,
                  hvp=options.metainit_hvp)
    oracle, space, eps = run.oracle, run.space, options.metainit_eps

    def step(t: int, alpha: np.ndarray) -> Step:
        result = gradient_quotient(oracle, space, alpha, run.source.batch(t), eps)
        return Step(result.gq, result.grad, result.grad_norm, metrics={"loss": result.loss})

    steps = options.metainit_steps
    batches = held_out(run.source, steps, options.held_out_batches)
    optimiser = SignMomentum(space.norms, space.lower, lr=options.metainit_lr,
                             momentum=options.metainit_momentum)
    outcome = optimise(space, step, optimiser, steps, description="metainit",
                       assess=(lambda a: assessment(oracle, space, a, batches, eps)) if batches
                       else None,
                       checkpoints=options.checkpoints, observe=observe)
    result = finish(
        "metainit", space, outcome,
        objective="gradient quotient GQ = mean |(g - Hg) / (g + eps sign g) - 1|",
        started=run.started,
        details={**data_details(run), "lr": options.metainit_lr,
                 "momentum": options.metainit_momentum, "eps": eps,
                 "min_scale": options.metainit_min_scale,
                 "held_out_batches": list(range(steps, steps + len(batches)))},
        advice=lower_rate_advice(space.norms, options.metainit_lr, options.metainit_momentum),
    )
    if result.changes:
        log.warning(TRAINING_CAVEAT, "docs/methods.md, 'Training from the rescaled weights'")
    return result
