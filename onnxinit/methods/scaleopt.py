"""The scale-optimisation core shared by GradInit, MetaInit and NIO (docs/methods.md).

**Parameterisation.** Every scalable parameter tensor ``p0_i`` of non-zero norm gets one scalar
``alpha_i`` (starting at 1), and ``p_i = alpha_i * p0_i``. For any objective ``F(theta)``, the
chain rule gives

    dF/dalpha_i = <dF/dp_i, p0_i>                                   (1)

so every alpha-gradient below comes from a parameter gradient. Lower bounds: ``min_scale`` for
weights (and every tensor that is not a bias), 0 for biases and normalisation shifts. Tensors of
norm 0 are skipped: they cannot be rescaled (they still take part in every gradient pass, and
GradInit's first step moves them).

**Gradient passes.** :class:`GradientOracle` runs :class:`~onnxinit.autodiff.GradientProgram`
(one compiled program per batch size) on flat float64 parameter vectors.

Hessian-vector products are exact where the autodiff can differentiate its own gradient graph
(reverse over reverse: the gradient of ``phi(theta) = <g(theta), v>`` with v a graph input is
``H v``; ``hvp="auto"`` or ``"exact"``). That is what the papers' double backpropagation
computes. On ReLU networks in float32 a central difference of gradients crosses activation
kinks and loses small curvature terms: on the normalization-free ResNet-20 it is off by 170%
against a float64 difference, and gives GradCosine's gradient the wrong sign, while with exact
products that gradient matches a difference of the objective. Where the gradient graph holds an op without a backward rule
(an op the second-order graph needs and the autodiff lacks) or with ``hvp="fd"`` (MetaInit's default: see metainit.py),
products come from central differences of gradient passes:

    H v               = (g(t + e v) - g(t - e v)) / (2 e),          e = r3 (1 + |t|) / |v|     (2)
    grad_t(a' H(t) b) = [g(t+ea+db) - g(t+ea-db) - g(t-ea+db) + g(t-ea-db)] / (4 e d),
                        e = r4 (1 + |t|) / |a|,  d = r4 (1 + |t|) / |b|                        (3)

with ``r3 = u**(1/3)`` and ``r4 = u**(1/4)`` (``u`` the unit roundoff of the program's dtype),
which balance truncation error against roundoff for first and second differences. (3) is the
third-derivative tensor ``D3L[a, b, .]``, symmetric in a and b; with exact products it is the
first difference ``(H(t + e a) b - H(t - e a) b) / (2 e)``, ``e = r3 (1 + |t|) / |a|``.

**Optimisers on alpha.** :class:`RescaleAdam` (GradInit, NIO; GradInit's code): each
alpha-gradient clipped to [-clip, clip], Adam (betas 0.9, 0.999, eps 1e-8) with separate first
moments for constraint and objective steps and one second moment, then clamped to the lower
bound. :class:`SignMomentum` (MetaInit): sign-SGD with momentum on each tensor's norm.

**Loop.** :func:`optimise` runs a method's step function (its objective and schedule), records
the trajectory and shows a progress bar; :func:`finish` turns the final alphas into a Plan.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import onnx

from ..autodiff import GradientProgram, ScalarOutput, build_gradient_graph, float_parameters
from ..autodiff.execution import Runner
from ..data import Batch, DataSource
from ..errors import InvalidOptionError, OnnxInitError, UnsupportedModelError
from ..graph import ModelGraph
from ..plan import Change, Plan
from ..progress import bar
from ._data import batches

log = logging.getLogger(__name__)

BIAS_ROLES = frozenset({"bias", "shift"})
HVP_MODES = ("auto", "exact", "fd")
# parameters by role and op: a constant Mul/Div operand (0.5 in GELU, 1/sqrt(d) in attention) is
# not a learnable tensor unless it also has another use
_CONSTANT_OPERAND_OPS = frozenset({"Mul", "Div"})


# --- flat parameter vectors -----------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where each named tensor lives in one flat float64 vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: np.ndarray  # len(names) + 1, offsets[i]:offsets[i+1] is tensor i

    @classmethod
    def of(cls, arrays: Mapping[str, np.ndarray]) -> Layout:
        names = tuple(arrays)
        shapes = tuple(tuple(np.shape(arrays[n])) for n in names)
        sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
        return cls(names, shapes, np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]))

    @property
    def size(self) -> int:
        return int(self.offsets[-1])

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def join(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        """The flat float64 vector of ``arrays`` (every name of the layout)."""
        return np.concatenate([np.asarray(arrays[n], dtype=np.float64).ravel()
                               for n in self.names]) if self.names else np.zeros(0)

    def split(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        """Name -> view of ``vector`` reshaped to the tensor's shape."""
        return {n: vector[self.offsets[i]:self.offsets[i + 1]].reshape(self.shapes[i])
                for i, n in enumerate(self.names)}

    def segment_dot(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Per tensor i: <a_i, b_i>."""
        ids = np.repeat(np.arange(len(self.names)), self.sizes)
        return np.bincount(ids, weights=a * b, minlength=len(self.names))

    def expand(self, per_tensor: np.ndarray) -> np.ndarray:
        """A per-tensor value repeated over each tensor's elements."""
        return np.repeat(per_tensor, self.sizes)


# --- which tensors, with which bounds -------------------------------------------------------


def scalable_parameters(graph: ModelGraph) -> dict[str, set[str]]:
    """Parameter name -> roles, for the learnable float tensors of docs/methods.md's common ground:
    weights and biases of Conv/ConvTranspose/Gemm/MatMul (and Add/Sub biases), normalisation
    scales and shifts, embedding tables, PRelu slopes. A constant operand of Mul/Div alone is a
    fixed constant (GELU's 0.5, attention's 1/sqrt(d)), not a parameter."""
    out = {}
    for name, param in graph.parameters.items():
        uses = [(graph.node(node_id).op_type, role) for node_id, _, role in param.uses]
        if all(op in _CONSTANT_OPERAND_OPS for op, _ in uses):
            continue
        out[name] = {role for _, role in uses}
    return out


@dataclass(frozen=True)
class ScaleSpace:
    """The alphas: which tensors of the differentiated ``layout`` have one, their lower bounds
    and norms, and the base point ``theta0`` (flat, float64).

    ``theta(alpha)``: p_i = alpha_i p0_i for scaled tensors, p0 for the others.
    ``alpha_gradient(dF/dtheta)``: equation (1), ``<dF/dp_i, p0_i>`` per scaled tensor."""

    layout: Layout
    theta0: np.ndarray
    names: tuple[str, ...]
    index: np.ndarray  # layout position of each scaled tensor
    lower: np.ndarray
    norms: np.ndarray
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.names)

    def multipliers(self, alpha: np.ndarray) -> np.ndarray:
        per_tensor = np.ones(len(self.layout.names))
        per_tensor[self.index] = alpha
        return self.layout.expand(per_tensor)

    def theta(self, alpha: np.ndarray) -> np.ndarray:
        return self.theta0 * self.multipliers(alpha)

    def alpha_gradient(self, dtheta: np.ndarray) -> np.ndarray:
        return self.layout.segment_dot(dtheta, self.theta0)[self.index]


def scale_space(
    graph: ModelGraph,
    values: Mapping[str, np.ndarray],
    *,
    min_scale: float,
    select: Callable[[str, tuple[int, ...]], bool] | None = None,
) -> ScaleSpace:
    """The alphas over ``values`` (name -> p0, every differentiated tensor, in order): a tensor
    has an alpha when it is a scalable parameter (:func:`scalable_parameters`), ``select``
    accepts it (name, shape), and its norm is not 0. Lower bound 0 for biases and shifts,
    ``min_scale`` for the rest."""
    if not min_scale >= 0:
        raise InvalidOptionError(f"the minimum scale must be >= 0, not {min_scale}")
    roles = scalable_parameters(graph)
    layout = Layout.of(values)
    theta0 = layout.join(values)
    names, index, lower, norms, skipped = [], [], [], [], {}
    for i, name in enumerate(layout.names):
        if name not in roles:
            continue
        if select is not None and not select(name, layout.shapes[i]):
            continue
        norm = float(np.linalg.norm(theta0[layout.offsets[i]:layout.offsets[i + 1]]))
        if norm == 0.0 or not math.isfinite(norm):
            skipped[name] = "norm is 0: cannot be rescaled" if norm == 0.0 else "not finite"
            continue
        names.append(name)
        index.append(i)
        lower.append(0.0 if roles[name] <= BIAS_ROLES else min_scale)
        norms.append(norm)
    if not names:
        raise UnsupportedModelError(
            f"{graph.name}: no parameter tensor with a non-zero norm to rescale")
    return ScaleSpace(layout, theta0, tuple(names), np.array(index, dtype=np.int64),
                      np.array(lower), np.array(norms), skipped)


# --- gradient passes ------------------------------------------------------------------------


def unit_roundoff(dtype: str) -> float:
    return float(np.finfo(np.float64 if dtype == "float64" else np.float32).eps)


def slice_batch(batch: Batch, start: int, stop: int) -> Batch:
    """Samples [start, stop) of a batch (axis 0 of every input and of the labels)."""
    return Batch(feeds={n: a[start:stop] for n, a in batch.feeds.items()},
                 labels=None if batch.labels is None else batch.labels[start:stop])


def concat_batches(first: Batch, second: Batch) -> Batch:
    feeds = {n: np.concatenate([first.feeds[n], second.feeds[n]]) for n in first.feeds}
    labels = None if first.labels is None else np.concatenate([first.labels, second.labels])
    return Batch(feeds=feeds, labels=labels)


def batch_length(batch: Batch) -> int:
    return len(next(iter(batch.feeds.values())))


class ExactHVP:
    """H v by reverse over reverse: the gradient graph of ``program`` extended with
    ``phi = sum_i <g_i, v_i>`` (v a graph input), differentiated again w.r.t. the parameters.
    Raises :class:`~onnxinit.errors.OnnxInitError` when the autodiff cannot (an op of the
    gradient graph without a backward rule)."""

    def __init__(self, program, device: str):
        from onnx import helper

        graph = program.graph
        model = graph.model
        elem = graph.elem_type
        nodes, inputs, terms = list(model.graph.node), list(model.graph.input), []
        taken = {n for node in nodes for n in [*node.input, *node.output]}
        taken |= {v.name for v in inputs} | {t.name for t in model.graph.initializer}
        self.directions = {}
        for k, name in enumerate(graph.wrt):
            grad = model.graph.output[k + 1]
            shape = [d.dim_value for d in grad.type.tensor_type.shape.dim]
            direction = self._fresh(f"hvp/v/{name}", taken)
            self.directions[name] = direction
            inputs.append(helper.make_tensor_value_info(direction, elem, shape))
            product = self._fresh(f"hvp/mul{k}", taken)
            total = self._fresh(f"hvp/sum{k}", taken)
            nodes.append(helper.make_node("Mul", [grad.name, direction], [product]))
            nodes.append(helper.make_node("ReduceSum", [product], [total], keepdims=0))
            terms.append(total)
        phi = self._fresh("hvp/phi", taken)
        nodes.append(helper.make_node("Sum", terms, [phi]))
        extended = helper.make_model(
            helper.make_graph(nodes, "hvp", inputs, [helper.make_tensor_value_info(phi, elem, [])],
                              list(model.graph.initializer)),
            opset_imports=model.opset_import, ir_version=model.ir_version)
        initializers = {t.name for t in model.graph.initializer}
        shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
                  for v in inputs if v.name not in initializers}
        self.graph = build_gradient_graph(
            extended, shapes, loss=ScalarOutput(phi), wrt=list(graph.wrt),
            dtype="float64" if program.float64 else "float32")
        self.wrt = graph.wrt
        self._runner = Runner(self.graph.model, device=device, float64=program.float64)
        self._inputs = {v.name for v in self.graph.model.graph.input}
        self._dtype = helper.tensor_dtype_to_np_dtype(elem)
        self._program = program

    @staticmethod
    def _fresh(name: str, taken: set[str]) -> str:
        while name in taken:
            name += "_"
        taken.add(name)
        return name

    def __call__(self, params: Mapping[str, np.ndarray], v: Mapping[str, np.ndarray],
                 batch: Batch) -> dict[str, np.ndarray]:
        feeds = self._program.session_feeds(batch.feeds, batch.labels, params)
        for name in self.wrt:
            feeds[self.directions[name]] = np.asarray(v[name], dtype=self._dtype)
        results = self._runner.run({k: a for k, a in feeds.items() if k in self._inputs})
        return dict(zip(self.graph.wrt, results[1:]))


class GradientOracle:
    """Loss gradients of ``model`` w.r.t. its ``wrt`` parameters on flat vectors, with
    Hessian-vector products (exact, or (2)) and third-order products ((3)). One compiled program
    per batch size (NIO's overlapping chunks differ in size). ``passes`` counts gradient passes,
    ``hvp_passes`` exact products; ``hvp_note`` says how products were computed."""

    def __init__(
        self,
        model: onnx.ModelProto,
        source: DataSource,
        wrt: Sequence[str],
        *,
        device: str = "auto",
        dtype: str = "float32",
        hvp: str = "auto",
    ):
        self._program_class = GradientProgram
        self.model = model
        self.source = source
        self.device = device
        self.dtype = dtype
        self.wrt = tuple(wrt)
        if hvp not in HVP_MODES:
            raise InvalidOptionError(f"hvp must be auto, exact or fd, not {hvp!r}")
        self.hvp_mode = hvp
        self.hvp_note = "finite differences of gradients" if hvp == "fd" else ""
        self._programs: dict[int, object] = {}
        self._exact: dict[int, ExactHVP | None] = {}
        self.hvp_passes = 0
        first = self.program(source.batch_size)
        self.values = {name: first.parameters[name] for name in self.wrt}
        self.layout = Layout.of(self.values)
        self.passes = 0
        u = unit_roundoff(dtype)
        self.rel_first = u ** (1.0 / 3.0)
        self.rel_second = u ** 0.25

    def program(self, batch_size: int):
        if batch_size not in self._programs:
            shapes = {name: (batch_size, *shape[1:]) for name, shape in self.source.shapes.items()}
            label_shape = None
            if self.source.label_shape is not None:
                label_shape = (batch_size, *tuple(self.source.label_shape)[1:])
            self._programs[batch_size] = self._program_class(
                self.model, shapes, loss=self.source.loss, output=self.source.output,
                wrt=list(self.wrt), label_shape=label_shape, device=self.device,
                dtype=self.dtype)
        return self._programs[batch_size]

    def exact(self, batch_size: int) -> ExactHVP | None:
        """The exact product for this batch size, or None (``hvp='fd'``, or the autodiff cannot
        differentiate the gradient graph; ``hvp_note`` says why)."""
        if self.hvp_mode == "fd":
            return None
        if batch_size not in self._exact:
            from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

            refused = (OnnxInitError, ort_errors.Fail, ort_errors.InvalidGraph,
                       ort_errors.NotImplemented, ort_errors.InvalidArgument)
            try:
                self._exact[batch_size] = ExactHVP(self.program(batch_size), self.device)
                self.hvp_note = "exact (reverse over reverse)"
            except refused as exc:  # the autodiff or onnxruntime cannot: differences instead
                if self.hvp_mode == "exact":
                    raise
                self._exact[batch_size] = None
                self.hvp_note = f"finite differences of gradients ({exc})"
        return self._exact[batch_size]

    def gradient(self, theta: np.ndarray, batch: Batch) -> tuple[float, np.ndarray]:
        """(L(batch; theta), dL/dtheta) with theta and the gradient flat."""
        program = self.program(batch_length(batch))
        loss, grads = program.gradients(batch.feeds, batch.labels, self.layout.split(theta))
        self.passes += 1
        return loss, self.layout.join(grads)

    def _step(self, theta: np.ndarray, v: np.ndarray, rel: float) -> float:
        v_norm = float(np.linalg.norm(v))
        return rel * (1.0 + float(np.linalg.norm(theta))) / v_norm if v_norm else 0.0

    def hvp(self, theta: np.ndarray, v: np.ndarray, batch: Batch) -> np.ndarray:
        """H(theta) v: exact where possible, else the central difference (2)."""
        exact = self.exact(batch_length(batch))
        if exact is not None:
            self.hvp_passes += 1
            return self.layout.join(exact(self.layout.split(theta), self.layout.split(v), batch))
        e = self._step(theta, v, self.rel_first)
        if e == 0.0:
            return np.zeros_like(theta)
        _, plus = self.gradient(theta + e * v, batch)
        _, minus = self.gradient(theta - e * v, batch)
        return (plus - minus) / (2.0 * e)

    def third(self, theta: np.ndarray, a: np.ndarray, b: np.ndarray, batch: Batch) -> np.ndarray:
        """grad_theta (a' H(theta) b) with a, b held fixed: a first difference of exact
        products, or the second difference (3)."""
        if self.exact(batch_length(batch)) is not None:
            e = self._step(theta, a, self.rel_first)
            if e == 0.0:
                return np.zeros_like(theta)
            return (self.hvp(theta + e * a, b, batch) - self.hvp(theta - e * a, b, batch)) / (2 * e)
        e = self._step(theta, a, self.rel_second)
        d = self._step(theta, b, self.rel_second)
        if e == 0.0 or d == 0.0:
            return np.zeros_like(theta)
        total = np.zeros_like(theta)
        for sa, sb, sign in ((1, 1, 1.0), (1, -1, -1.0), (-1, 1, -1.0), (-1, -1, 1.0)):
            _, g = self.gradient(theta + sa * e * a + sb * d * b, batch)
            total += sign * g
        return total / (4.0 * e * d)


# --- optimisers on alpha --------------------------------------------------------------------


class RescaleAdam:
    """Adam on alpha as GradInit's code does it (also NIO's). Per alpha, with c = ``clip``:

        g  = clip(dF/dalpha, -c, c)                (c = 0: no clipping)
        m_k = b1 m_k + (1 - b1) g                  k = constraint or objective step, own count t_k
        v  = b2 v + (1 - b2) g^2                   shared, count t = t_constraint + t_objective
        alpha = max(alpha - lr / (1 - b1^t_k) * m_k / (sqrt(v / (1 - b2^t)) + eps), lower)
    """

    def __init__(self, lower: np.ndarray, *, lr: float, clip: float = 1.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if not lr > 0:
            raise InvalidOptionError(f"the scale learning rate must be > 0, not {lr}")
        if not clip >= 0:
            raise InvalidOptionError(f"the gradient clip must be >= 0, not {clip}")
        self.lower = np.asarray(lower, dtype=np.float64)
        self.lr, self.clip, self.betas, self.eps = lr, clip, betas, eps
        n = len(self.lower)
        self.first = {True: np.zeros(n), False: np.zeros(n)}
        self.count = {True: 0, False: 0}
        self.second = np.zeros(n)

    def step(self, alpha: np.ndarray, grad: np.ndarray, constraint: bool) -> np.ndarray:
        b1, b2 = self.betas
        g = np.clip(grad, -self.clip, self.clip) if self.clip > 0 else np.asarray(grad)
        self.count[constraint] += 1
        self.first[constraint] = b1 * self.first[constraint] + (1 - b1) * g
        self.second = b2 * self.second + (1 - b2) * g * g
        t_k, t = self.count[constraint], self.count[True] + self.count[False]
        denom = np.sqrt(self.second / (1 - b2 ** t)) + self.eps
        update = self.lr / (1 - b1 ** t_k) * self.first[constraint] / denom
        return np.maximum(alpha - update, self.lower)


class SignMomentum:
    """MetaInit's sign-SGD with momentum on each tensor's norm |p_i| = alpha_i |p0_i|:

        m_i = momentum m_i - lr sign(dF/dalpha_i)
        |p_i| <- |p_i| + m_i,  i.e.  alpha_i <- max(alpha_i + m_i / |p0_i|, lower_i)

    (sign(<dF/dp, p>/|p|) = sign(dF/dalpha) since alpha > 0)."""

    def __init__(self, norms: np.ndarray, lower: np.ndarray, *, lr: float, momentum: float):
        if not lr > 0:
            raise InvalidOptionError(f"the learning rate must be > 0, not {lr}")
        if not 0 <= momentum < 1:
            raise InvalidOptionError(f"the momentum must be in [0, 1), not {momentum}")
        self.norms = np.asarray(norms, dtype=np.float64)
        self.lower = np.asarray(lower, dtype=np.float64)
        self.lr, self.momentum = lr, momentum
        self.memory = np.zeros(len(self.norms))

    def step(self, alpha: np.ndarray, grad: np.ndarray, constraint: bool = False) -> np.ndarray:
        self.memory = self.momentum * self.memory - self.lr * np.sign(grad)
        return np.maximum(alpha + self.memory / self.norms, self.lower)


# --- the loop -------------------------------------------------------------------------------


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


class Optimiser(Protocol):
    """What :func:`optimise` needs (RescaleAdam, SignMomentum): the next alphas."""

    def step(self, alpha: np.ndarray, grad: np.ndarray, constraint: bool) -> np.ndarray: ...


def optimise(
    space: ScaleSpace,
    step: Callable[[int, np.ndarray], Step],
    optimiser: Optimiser,
    iterations: int,
    *,
    description: str,
) -> tuple[np.ndarray, list[dict]]:
    """Run ``iterations`` steps from alpha = 1; return the final alphas and the trajectory
    (per iteration: objective, gradient norm, constraint, |dF/dalpha|, the step's metrics).

    A step whose objective or gradient is not finite (the optimiser overshot into overflow)
    ends the run on the last alphas that evaluated finitely, with a warning and a ``stopped``
    entry in the trajectory; at the input's own scales it is an error."""
    if iterations < 0:
        raise InvalidOptionError(f"the number of iterations must be >= 0, not {iterations}")
    alpha = last_good = np.ones(space.size)
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
                return last_good, trajectory
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
            shown = {"gnorm": f"{result.grad_norm:.3g}"}
            if value is not None:
                shown["objective"] = f"{value:.4g}"
            progress.set_postfix(shown, refresh=False)
            progress.update()
    return alpha, trajectory


def finish(
    method: str,
    space: ScaleSpace,
    alpha: np.ndarray,
    trajectory: list[dict],
    *,
    objective: str,
    before: Mapping[str, float],
    after: Mapping[str, float],
    details: Mapping,
    started: float,
    top: int = 10,
) -> Plan:
    """The Plan (a Change with scale alpha for every tensor whose alpha moved from 1) and the
    report: hyperparameters and data (``details``), the objective on the evaluation batch
    before and after, the trajectory, every final scale, and the ``top`` tensors whose scale
    moved most (by |log alpha|)."""
    scales = {name: float(a) for name, a in zip(space.names, alpha)}
    moved = sorted(scales, key=lambda n: (-abs(math.log(scales[n])) if scales[n] > 0
                                          else -math.inf, n))
    changes = {
        name: Change(scale=s, rule=method, target=objective)
        for name, s in scales.items() if s != 1.0
    }
    seconds = time.perf_counter() - started
    constraint_steps = sum(1 for r in trajectory if r.get("constraint"))
    report = {
        "objective": objective,
        **dict(details),
        "iterations": sum(1 for r in trajectory if "stopped" not in r),
        "constraint_steps": constraint_steps,
        "stopped": next((r["stopped"] for r in trajectory if "stopped" in r), None),
        "before": dict(before),
        "after": dict(after),
        "trajectory": trajectory,
        "scales": scales,
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
    options,
    *,
    min_scale: float,
    select: Callable[[str, tuple[int, ...]], bool] | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    dtype: str = "float32",
    hvp: str = "auto",
) -> Run:
    """Data source (``options``: a DataOptions with ``seed``), gradient oracle over every
    scalable parameter, and the alphas (:func:`scale_space`)."""
    started = time.perf_counter()
    source = batches(graph, options, batch_size=batch_size)
    model = graph.source
    differentiable = float_parameters(model)
    wrt = [n for n in scalable_parameters(graph) if n in differentiable]
    if not wrt:
        raise UnsupportedModelError(f"{graph.name}: no float parameter to differentiate")
    oracle = GradientOracle(model, source, wrt, device=device, dtype=dtype, hvp=hvp)
    space = scale_space(graph, oracle.values, min_scale=min_scale, select=select)
    return Run(graph, source, oracle, space, started)


def data_details(run: Run) -> dict:
    return {
        "data": "synthetic" if run.source.synthetic else "file",
        "batch_size": run.source.batch_size,
        "loss": run.source.loss,
        "loss_output": run.source.output,
        "seed": run.source.seed,
        "tensors": run.space.size,
        "hessian_vector_products": run.oracle.hvp_note or "none needed",
        "gradient_passes": run.oracle.passes,
        "exact_hvp_passes": run.oracle.hvp_passes,
    }
