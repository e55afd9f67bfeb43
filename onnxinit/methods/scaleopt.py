"""The loop shared by GradInit, MetaInit and NIO (docs/methods.md): set up data, gradient oracle
and scales (:func:`prepare`), run a method's step function with its optimiser
(:func:`optimise`), and turn the scales into a Plan (:func:`finish`).

**Held-out checks.** Before the first step, at ``checkpoints`` evenly spaced iterations and at
the end, the method's own objective is measured on held-out batches (batches the optimisation
never draws) by the method's ``assess`` function, which ranks scales (lower is better: feasible
before infeasible, then by objective). The scales returned are the best ranked of these. When
that is not the last iteration's, a warning says so; when it is the input's own scales, the
method changed nothing it could show to help, and the warning says that and suggests a lower
scale learning rate. (The papers return the last iteration's scales; on networks where the
objective measured on fresh batches got worse, that would hand the user a worse network
without telling them.)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..data import DataSource
from ..errors import InvalidOptionError, UnsupportedModelError
from ..graph import ModelGraph
from ..parameters import float_parameters
from ..progress import bar
from ..propagate import single_threaded_blas
from ..plan import Change, Plan
from .options import option
from ._data import LossOptions, batches
from .oracle import GradientOracle
from .scales import ScaleSpace, scalable_parameters, scale_space

log = logging.getLogger(__name__)

PRECISIONS = ("float32", "float64")


@dataclass
class GradientOptions(LossOptions):
    """Options every gradient-based method (gradinit, metainit, nio) shares."""

    precision: str = option(
        "float32", "gradinit, metainit, nio: arithmetic of the gradient passes: float32 (CUDA "
                   "when available) or float64 (CPU only, several times slower).",
        choices=PRECISIONS)
    threads: int = option(
        0, "gradinit, metainit, nio: onnxruntime CPU threads (0: onnxruntime's choice, one per "
           "core).", ge=0)
    held_out_batches: int = option(
        4, "gradinit, metainit, nio: batches (gradinit: batch pairs) the objective is measured "
           "on before, during and after the run; the best-measured scales are kept (0: no "
           "checks, keep the last iteration's scales as the papers do).", ge=0)
    checkpoints: int = option(
        5, "gradinit, metainit, nio: held-out checks during the run, evenly spaced (besides "
           "before and after).", ge=0)
    seed: int = 0


@dataclass
class Step:
    """What one iteration of a method computed at the current alphas.

    ``objective``: the method's objective at this step, or None when the step did not compute
    it (a GradInit constraint step); ``grad``: the alpha-gradient of what this step minimises
    (the objective, its negation for a maximised one, or the gradient norm on a constraint
    step); ``grad_norm``: the gradient norm the method constrains; ``constraint``: whether this
    was a constraint step; ``metrics``: more values for the trajectory."""

    objective: float | None
    grad: np.ndarray
    grad_norm: float
    constraint: bool = False
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Assessment:
    """A method's objective at some scales on the held-out batches: the values to report and
    a rank (lower is better)."""

    values: dict[str, float]
    rank: tuple


class Optimiser(Protocol):
    """What :func:`optimise` needs (RescaleAdam, SignMomentum): the next alphas."""

    def step(self, alpha: np.ndarray, grad: np.ndarray, constraint: bool) -> np.ndarray: ...


@dataclass
class Outcome:
    """The run: the last scales, the trajectory, and the held-out checks (iteration, scales,
    assessment), the first at the input's scales (iteration 0)."""

    alpha: np.ndarray
    trajectory: list[dict]
    checks: list[tuple[int, np.ndarray, Assessment]]


def checkpoint_iterations(iterations: int, checkpoints: int) -> set[int]:
    """Iteration counts after which the held-out check runs: ``checkpoints`` evenly spaced ones
    and the last."""
    if iterations <= 0:
        return set()
    spaced = {round(iterations * (k + 1) / (checkpoints + 1)) for k in range(max(checkpoints, 0))}
    return {n for n in spaced if 0 < n < iterations} | {iterations}


def optimise(
    space: ScaleSpace,
    step: Callable[[int, np.ndarray], Step],
    optimiser: Optimiser,
    iterations: int,
    *,
    description: str,
    assess: Callable[[np.ndarray], Assessment] | None,
    checkpoints: int = 5,
    observe: Callable[[int, np.ndarray], None] | None = None,
) -> Outcome:
    """Run ``iterations`` steps from alpha = 1 with held-out checks (module docstring; none when
    ``assess`` is None); the trajectory has, per iteration, the objective, gradient norm, constraint, |dF/dalpha| and
    the step's metrics. ``observe(t, alpha)`` sees the scales after every step.

    A step whose objective or gradient is not finite (the optimiser overshot into overflow)
    ends the run on the last alphas that evaluated finitely, with a warning and a ``stopped``
    entry in the trajectory; at the input's own scales it is an error."""
    if iterations < 0:
        raise InvalidOptionError(f"the number of iterations must be >= 0, not {iterations}")
    with single_threaded_blas():  # vector norms and dots: threads only add wake-up time
        return _loop(space, step, optimiser, iterations, description, assess, checkpoints,
                     observe)


def _loop(space, step, optimiser, iterations, description, assess, checkpoints, observe):
    alpha = last_good = np.ones(space.size)
    checks = [] if assess is None else [(0, alpha, assess(alpha))]
    marks = set() if assess is None else checkpoint_iterations(iterations, checkpoints)
    trajectory: list[dict] = []
    with bar(iterations, description) as progress:
        for t in range(iterations):
            result = step(t, alpha)
            grad = np.asarray(result.grad, dtype=np.float64)
            value = None if result.objective is None else float(result.objective)
            if not (np.all(np.isfinite(grad)) and math.isfinite(result.grad_norm)
                    and (value is None or math.isfinite(value))):
                problem = (f"the objective or a gradient is not finite at iteration {t} "
                           f"(objective {value}, gradient norm {result.grad_norm})")
                if t == 0:
                    raise UnsupportedModelError(
                        f"{description}: {problem} at the model's own scales; check the "
                        "model's loss on this data")
                log.warning("%s: %s; stopped, keeping the scales of iteration %d (a lower "
                            "learning rate may get further)", description, problem, t - 1)
                trajectory.append({"iteration": t, "stopped": problem})
                if checks and checks[-1][0] != t - 1:
                    checks.append((t - 1, last_good, assess(last_good)))
                return Outcome(last_good, trajectory, checks)
            last_good = alpha
            trajectory.append({
                "iteration": t,
                "objective": value,
                "grad_norm": float(result.grad_norm),
                "constraint": bool(result.constraint),
                "alpha_grad_norm": float(np.linalg.norm(grad)),
                **{k: float(v) for k, v in result.metrics.items()},
            })
            alpha = optimiser.step(alpha, grad, result.constraint)
            if observe is not None:
                observe(t, alpha)
            if t + 1 in marks:
                checks.append((t + 1, alpha, assess(alpha)))
            shown = {"gnorm": f"{result.grad_norm:.3g}"}
            if value is not None:
                shown["objective"] = f"{value:.4g}"
            progress.set_postfix(shown, refresh=False)
            progress.update()
    return Outcome(alpha, trajectory, checks)


DEFAULT_ADVICE = "a lower scale learning rate or fewer iterations"


def choose(outcome: Outcome, description: str,
           advice: str = DEFAULT_ADVICE) -> tuple[int, np.ndarray, Assessment | None]:
    """The best-ranked held-out check (the latest of equals), with a warning when it is not the
    last one (module docstring; ``advice`` says what to change when nothing beat the model's own
    scales); without checks, the last scales."""
    if not outcome.checks:
        stopped = bool(outcome.trajectory) and "stopped" in outcome.trajectory[-1]
        return len(outcome.trajectory) - (2 if stopped else 0), outcome.alpha, None
    best = min(range(len(outcome.checks)),
               key=lambda i: (outcome.checks[i][2].rank, -i))
    kept = outcome.checks[best]
    last = outcome.checks[-1]
    if best != len(outcome.checks) - 1:
        if kept[0] == 0:
            log.warning(
                "%s: the objective measured on held-out batches is worse at every checked "
                "iteration than at the model's own scales (%s -> %s at iteration %d); kept the "
                "model's scales unchanged. Try %s.", description, _shown(kept[2]),
                _shown(last[2]), last[0], advice)
        else:
            log.warning(
                "%s: the objective measured on held-out batches was better at iteration %d "
                "(%s) than at the end (%s, iteration %d); kept the scales of iteration %d.",
                description, kept[0], _shown(kept[2]), _shown(last[2]), last[0], kept[0])
    return kept


def at_lower_bound(space: ScaleSpace, alpha: np.ndarray) -> list[str]:
    """The weight tensors (lower bound > 0; a bias at 0 is harmless) whose scale is at its
    bound."""
    return [name for name, a, low in zip(space.names, alpha, space.lower) if 0 < low and a <= low]


def _shown(assessment: Assessment) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in assessment.values.items())


def finish(
    method: str,
    space: ScaleSpace,
    outcome: Outcome,
    *,
    objective: str,
    details: dict,
    started: float,
    advice: str = DEFAULT_ADVICE,
    top: int = 10,
) -> Plan:
    """The Plan (a Change with scale alpha for every tensor whose kept alpha is not 1) and the
    report: hyperparameters and data (``details``), the objective on the held-out batches before
    (``before``), at the kept scales (``after``) and at every check, the trajectory, every kept
    scale, and the ``top`` tensors whose scale moved most (by |log alpha|). ``advice``: what the
    warning suggests when no iteration beat the model's own scales."""
    kept_iteration, alpha, kept = choose(outcome, method, advice)
    scales = {name: float(a) for name, a in zip(space.names, alpha)}
    bounded = at_lower_bound(space, alpha)
    if bounded:
        log.warning(
            "%s: %d weight tensor(s) kept at the lower bound --%s-min-scale (%g of their norm): "
            "%s. The optimisation pushed them further down and was stopped there; the layers "
            "they scale now pass almost nothing (a residual branch is then switched off). "
            "Check that the network still trains at your learning rate, or try %s.",
            method, len(bounded), method, float(space.lower[space.names.index(bounded[0])]),
            ", ".join(bounded[:5]) + (", ..." if len(bounded) > 5 else ""), advice)
    moved = sorted(scales, key=lambda n: (-abs(math.log(scales[n])) if scales[n] > 0
                                          else -math.inf, n))
    changes = {
        name: Change(scale=s, rule=method, target=objective)
        for name, s in scales.items() if s != 1.0
    }
    seconds = time.perf_counter() - started
    trajectory = outcome.trajectory
    report = {
        "objective": objective,
        **details,
        "iterations": sum(1 for r in trajectory if "stopped" not in r),
        "constraint_steps": sum(1 for r in trajectory if r.get("constraint")),
        "stopped": next((r["stopped"] for r in trajectory if "stopped" in r), None),
        "before": dict(outcome.checks[0][2].values) if outcome.checks else None,
        "after": dict(kept.values) if kept is not None else None,
        "kept_iteration": kept_iteration,
        "held_out_checks": [{"iteration": i, **a.values} for i, _, a in outcome.checks],
        "trajectory": trajectory,
        "scales": scales,
        "at_lower_bound": bounded,
        "moved_most": [{"tensor": n, "scale": scales[n]} for n in moved[:top]],
        "skipped": dict(space.skipped),
        "seconds": seconds,
        "seconds_per_iteration": seconds / len(trajectory) if trajectory else None,
    }
    return Plan(method=method, changes=changes, report=report)


# --- setting up a run -----------------------------------------------------------------------


@dataclass
class Run:
    """What a method needs: the data, the gradient oracle, the alphas."""

    graph: ModelGraph
    source: DataSource
    oracle: GradientOracle
    space: ScaleSpace
    started: float


def prepare(
    graph: ModelGraph,
    options: GradientOptions,
    *,
    min_scale: float,
    select: Callable[[str, tuple[int, ...]], bool] | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    hvp: str = "auto",
) -> Run:
    """Data source, gradient oracle over every scalable parameter (in ``options.precision``,
    with ``options.threads``), and the alphas (:func:`~.scales.scale_space`)."""
    started = time.perf_counter()
    source = batches(graph, options, batch_size=batch_size)
    model = graph.source_with_values()  # after earlier methods of a composition: their values
    differentiable = float_parameters(model)
    wrt = [n for n in scalable_parameters(graph) if n in differentiable]
    if not wrt:
        raise UnsupportedModelError(f"{graph.name}: no float parameter to differentiate")
    oracle = GradientOracle(model, source, wrt, device=device, dtype=options.precision,
                            hvp=hvp, threads=options.threads or None)
    space = scale_space(graph, oracle.values, min_scale=min_scale, select=select)
    return Run(graph, source, oracle, space, started)


def held_out(source: DataSource, first: int, count: int) -> list:
    """Batches ``first``, ..., ``first + count - 1``: past every batch the optimisation draws."""
    return [source.batch(first + k) for k in range(count)]


def data_details(run: Run) -> dict:
    return {
        "data": "synthetic" if run.source.synthetic else "file",
        "batch_size": run.source.batch_size,
        "loss": run.source.loss,
        "loss_output": run.source.output,
        "seed": run.source.seed,
        "precision": run.oracle.dtype,
        "tensors": run.space.size,
        "hessian_vector_products": run.oracle.hvp_note or "none needed",
        "gradient_passes": run.oracle.passes,
        "exact_program_runs": run.oracle.exact_passes,
    }
