"""NIO (Neural Initialization Optimization, GradCosine; docs/methods.md): per-tensor scales that
maximise the cosine similarity of sub-batch gradients under a bound on their norm.

Per iteration t: batch t of B samples is split into D overlapping chunks of length l = B // D
widened by the overlap ratio r (the reference code's bounds):

    chunk 0: [0, (1+r) l),   chunk i: [(1-r) l i, (1+r) l (i+1)),   chunk D-1: [(1-r) l (D-1), B)

g_i = gradient of chunk i's mean loss, n_i = |g_i|, u_i = g_i / n_i, S = sum_i u_i:

    GradCosine GC = (1 / (D (D-1))) sum_{i != j} <u_i, u_j> = (|S|^2 - D) / (D (D-1))
    gnorm = (1/D) sum_i n_i

* If gnorm > gamma: constraint step minimising gnorm, d gnorm/dtheta = (1/D) sum_i H_i u_i.
* Else maximise F = GC + gn_mul sum_i n_i (``gc_gn_sqrt``, the paper's ResNet-50 setting) or
  F = GC (``gc``). With dGC/dg_i = 2 (S - <u_i, S> u_i) / (D (D-1) n_i) and dn_i/dg_i = u_i,

      dF/dtheta = sum_i H_i w_i,   w_i = 2 (S - <u_i, S> u_i) / (D (D-1) n_i) + gn_mul u_i

  H_i (the Hessian of chunk i's loss) times w_i exact where the autodiff can (``nio_hvp``),
  else by finite differences of chunk gradients: D gradient passes and D products (3D gradient
  passes with differences) per iteration on chunks of about (1 + 2r) B / D samples. Exact
  products run in two stages (:mod:`onnxinit.autodiff.staged`): the chunk gradient passes are
  their first stages, so a product costs its second stage only.

Adam on alpha as in GradInit (descending -F, or gnorm on constraint steps), clipped, clamped.
The report gives GC, gnorm and F on held-out batches T, T + 1, ... before, at the checkpoints
and at the kept scales (scaleopt: the best-measured scales are kept).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from ..data import Batch, slice_batch
from ..errors import InvalidOptionError
from ..graph import ModelGraph
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
    held_out,
    optimise,
    prepare,
)
from .scales import ScaleSpace

if TYPE_CHECKING:
    from ..autodiff.staged import Carry

OBJECTIVES = ("gc_gn_sqrt", "gc")


@dataclass
class NIOOptions(GradientOptions):
    nio_lr: float = option(3e-3, "nio: learning rate of the scales (Adam).", gt=0)
    nio_iterations: int = option(100, "nio: iterations, one fresh batch each.", ge=0)
    nio_gamma: float = option(
        10.0, "nio: bound gamma on the mean sub-batch gradient norm; above it a step minimises "
              "the norm instead.", gt=0)
    nio_splits: int = option(4, "nio: number D of sub-batches each batch is split into.", ge=2)
    nio_overlap: float = option(
        0.2, "nio: overlap ratio r: sub-batch i covers [(1-r) l i, (1+r) l (i+1)), l = B/D.",
        ge=0, lt=1)
    nio_gn_mul: float = option(
        1.0, "nio: weight of the summed sub-batch gradient norms in the gc_gn_sqrt objective.",
        ge=0)
    nio_objective: str = option(
        "gc_gn_sqrt", "nio: maximise GradCosine + gn_mul * sum of sub-batch gradient norms "
                      "(gc_gn_sqrt) or GradCosine alone (gc).", choices=OBJECTIVES)
    nio_min_scale: float = option(0.01, "nio: lower bound of the weight scales (biases: 0).", ge=0)
    nio_grad_clip: float = option(
        1.0, "nio: clip each scale's gradient to [-c, c] before Adam (0: no clipping).", ge=0)
    nio_hvp: str = option(
        "auto",
        "nio: Hessian-vector products: exact (reverse over reverse; float32 differences of "
        "gradients get the sign of GradCosine's gradient wrong on ReLU nets), fd, or auto "
        "(exact where the autodiff can, else fd).",
        choices=HVP_MODES)


def chunk_bounds(batch_size: int, splits: int, overlap: float) -> list[tuple[int, int]]:
    """[start, stop) of each of the ``splits`` overlapping sub-batches (module docstring)."""
    length = batch_size // splits
    if length < 1:
        raise InvalidOptionError(
            f"a batch of {batch_size} cannot be split into {splits} sub-batches "
            f"(raise --batch-size or lower --nio-splits)")
    bounds = []
    for i in range(splits):
        start = 0 if i == 0 else int((1 - overlap) * length * i)
        stop = batch_size if i == splits - 1 else int((1 + overlap) * length * (i + 1))
        bounds.append((start, min(stop, batch_size)))
    return bounds


def refuse_fixed_batch(graph: ModelGraph) -> None:
    """Sub-batches need a dynamic batch axis (axis 0 of every input)."""
    for value in graph.model_inputs():
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            raise InvalidOptionError(
                f"{graph.name}: input {value.name!r} has a fixed batch size "
                f"{dims[0].dim_value}; nio runs sub-batches of other sizes and needs a dynamic "
                "batch axis (re-export with a dynamic batch dimension)")


@dataclass
class Chunks:
    """Sub-batch gradients at one theta: g_i, n_i, and the sub-batches."""

    theta: np.ndarray
    batches: list[Batch]
    grads: list[np.ndarray]
    norms: np.ndarray
    losses: list[float]
    carries: list[Carry | None] | None = None  # what exact products at theta reuse

    @cached_property
    def units(self) -> list[np.ndarray]:
        """u_i = g_i / n_i, computed once (GC, F and the weights w_i all use them)."""
        return [g / max(n, np.finfo(np.float64).tiny) for g, n in zip(self.grads, self.norms)]


def chunk_gradients(oracle: GradientOracle, theta: np.ndarray, batch: Batch,
                    bounds: list[tuple[int, int]], products: bool = False) -> Chunks:
    """The sub-batch gradients at theta; with ``products``, also what the Hessian-vector
    products of :func:`through_hessians` reuse (stage 1 of the staged product program)."""
    batches = [slice_batch(batch, start, stop) for start, stop in bounds]
    if products:
        losses, grads, carries = zip(*(oracle.gradient_kept(theta, b) for b in batches))
    else:
        losses, grads = zip(*(oracle.gradient(theta, b) for b in batches))
        carries = None
    return Chunks(theta, batches, list(grads), np.array([np.linalg.norm(g) for g in grads]),
                  list(losses), None if carries is None else list(carries))


def grad_cosine(chunks: Chunks) -> float:
    """GC = (|sum u_i|^2 - D) / (D (D-1))."""
    d = len(chunks.grads)
    total = np.sum(chunks.units, axis=0)
    return float((total @ total - d) / (d * (d - 1)))


def cosine_weights(chunks: Chunks, gn_mul: float) -> list[np.ndarray]:
    """w_i = dF/dg_i for F = GC + gn_mul sum n_i (module docstring)."""
    d = len(chunks.grads)
    units = chunks.units
    total = np.sum(units, axis=0)
    return [2.0 * (total - (u @ total) * u) / (d * (d - 1) * max(n, np.finfo(np.float64).tiny))
            + gn_mul * u for u, n in zip(units, chunks.norms)]


def through_hessians(oracle: GradientOracle, chunks: Chunks,
                     weights: list[np.ndarray]) -> np.ndarray:
    """sum_i H_i w_i: the parameter gradient of a function of the g_i with dF/dg_i = w_i."""
    carries = chunks.carries or [None] * len(weights)
    return sum(oracle.hvp(chunks.theta, w, b, carry)
               for w, b, carry in zip(weights, chunks.batches, carries))


def objective(chunks: Chunks, gn_mul: float) -> float:
    return grad_cosine(chunks) + gn_mul * float(np.sum(chunks.norms))


def objective_gradient(oracle: GradientOracle, space: ScaleSpace, chunks: Chunks,
                       gn_mul: float) -> np.ndarray:
    """dF/dalpha for F = GC + gn_mul sum n_i."""
    return space.alpha_gradient(through_hessians(oracle, chunks, cosine_weights(chunks, gn_mul)))


def mean_norm_gradient(oracle: GradientOracle, space: ScaleSpace, chunks: Chunks) -> np.ndarray:
    """d gnorm / dalpha, gnorm = (1/D) sum n_i."""
    d = len(chunks.grads)
    return space.alpha_gradient(through_hessians(oracle, chunks, [u / d for u in chunks.units]))


def assessment(oracle: GradientOracle, space: ScaleSpace, alpha: np.ndarray,
               batches: list[Batch], bounds: list[tuple[int, int]], gn_mul: float,
               gamma: float) -> Assessment:
    """Means over the held-out ``batches`` of GradCosine, gnorm and F; ranked feasible
    (mean gnorm <= gamma) first, by -F, then by gnorm."""
    rows = []
    for batch in batches:
        chunks = chunk_gradients(oracle, space.theta(alpha), batch, bounds)
        rows.append((grad_cosine(chunks), float(np.mean(chunks.norms)),
                     objective(chunks, gn_mul)))
    gradcosine, gnorm, value = (float(np.mean(c)) for c in zip(*rows))
    values = {"gradcosine": gradcosine, "gnorm": gnorm, "objective": value}
    return Assessment(values, (0, -value) if gnorm <= gamma else (1, gnorm))


def plan(graph: ModelGraph, options: NIOOptions | None = None, *,
         observe: Callable[[int, np.ndarray], None] | None = None) -> Plan:
    """NIO scales for every parameter tensor (see the module docstring). ``observe(t, alpha)``
    sees the scales after every iteration."""
    options = options or NIOOptions()
    check_values(options)
    refuse_fixed_batch(graph)
    run = prepare(graph, options, min_scale=options.nio_min_scale, hvp=options.nio_hvp)
    oracle, space = run.oracle, run.space
    bounds = chunk_bounds(run.source.batch_size, options.nio_splits, options.nio_overlap)
    gn_mul = options.nio_gn_mul if options.nio_objective == "gc_gn_sqrt" else 0.0

    def step(t: int, alpha: np.ndarray) -> Step:
        batch = run.source.batch(t)
        chunks = chunk_gradients(oracle, space.theta(alpha), batch, bounds, products=True)
        gnorm = float(np.mean(chunks.norms))
        metrics = {"gradcosine": grad_cosine(chunks), "gnorm": gnorm}
        value = objective(chunks, gn_mul)
        if gnorm > options.nio_gamma:
            return Step(value, mean_norm_gradient(oracle, space, chunks), gnorm, constraint=True,
                        metrics=metrics)
        return Step(value, -objective_gradient(oracle, space, chunks, gn_mul), gnorm,
                    metrics=metrics)

    iterations = options.nio_iterations
    batches = held_out(run.source, iterations, options.held_out_batches)
    optimiser = RescaleAdam(space.lower, lr=options.nio_lr, clip=options.nio_grad_clip)
    outcome = optimise(
        space, step, optimiser, iterations, description="nio",
        assess=(lambda a: assessment(oracle, space, a, batches, bounds, gn_mul,
                                     options.nio_gamma)) if batches else None,
        checkpoints=options.checkpoints, observe=observe)
    name = "GradCosine + gn_mul * sum |g_i|" if gn_mul else "GradCosine"
    return finish(
        "nio", space, outcome,
        objective=f"maximise {name} subject to mean |g_i| <= {options.nio_gamma:g}",
        started=run.started,
        advice="a lower --nio-lr or fewer --nio-iterations",
        details={**data_details(run), "objective_kind": options.nio_objective, "lr": options.nio_lr,
                 "gamma": options.nio_gamma, "splits": options.nio_splits,
                 "overlap": options.nio_overlap, "gn_mul": gn_mul, "chunks": bounds,
                 "min_scale": options.nio_min_scale, "grad_clip": options.nio_grad_clip,
                 "held_out_batches": list(range(iterations, iterations + len(batches)))},
    )
