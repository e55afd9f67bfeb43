"""Gradient passes for the scale-optimising methods, on flat float64 parameter vectors.

:class:`GradientOracle` runs :class:`~onnxinit.autodiff.GradientProgram` (one compiled program
per batch size: NIO's overlapping sub-batches differ in size) and the exact higher-order programs
of :mod:`onnxinit.autodiff.hvp` that the methods build on it.

Hessian-vector products are exact where the autodiff can differentiate its own gradient graph
(``hvp="auto"`` or ``"exact"``): that is what the papers' double backpropagation computes. Where
the gradient graph holds an op without a backward rule, or with ``hvp="fd"``, products come from
central differences of gradient passes:

    H v               = (g(t + e v) - g(t - e v)) / (2 e),          e = r3 (1 + |t|) / |v|     (2)
    grad_t(a' H(t) b) = [g(t+ea+db) - g(t+ea-db) - g(t-ea+db) + g(t-ea-db)] / (4 e d),
                        e = r4 (1 + |t|) / |a|,  d = r4 (1 + |t|) / |b|                        (3)

with ``r3 = u**(1/3)`` and ``r4 = u**(1/4)`` (``u`` the unit roundoff of the program's dtype),
which balance truncation error against roundoff for first and second differences. (3) is the
third-derivative tensor ``D3L[a, b, .]``, symmetric in a and b; with exact products it is the
first difference ``(H(t + e a) b - H(t - e a) b) / (2 e)``, ``e = r3 (1 + |t|) / |a|``.
On ReLU networks in float32 the differences cross activation kinks and lose small curvature
terms (on the normalization-free ResNet-20 a float32 difference is off by 170% against a float64
one), so exact products are the default wherever they exist.

**Scaled convolutions.** Where a caller evaluates at ``theta_i = s_i p0_i`` (the methods' own
points, not a stepped or perturbed theta) it passes the per-tensor multipliers ``scales``, and a
program asked for with ``scaled=True`` reads each convolution weight as the constant ``p0_i``
with ``s_i`` applied to the convolution's output (:mod:`onnxinit.autodiff.scaled`): onnxruntime
prepacks constant weights, and the same values come out (to float rounding). Off with
``scaled_convolutions=False`` and on other backends than onnxruntime.

**Blocked convolutions.** Every convolution left with a weight that is not a constant (the
stepped weights of GradInit's objective step, the directions of second-order programs, the
unscaled gradient passes) runs on onnxruntime's NCHWc kernels with the weight reordered in the
graph (:mod:`onnxinit.autodiff.blocked`): float32 on the CPU provider only. Off with
``blocked_convolutions=False``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from typing import TYPE_CHECKING

import numpy as np
import onnx

from ..data import Batch, DataSource, batch_length
from ..errors import InvalidOptionError, OnnxInitError
from ..lazy import lazy_module
from .scales import Layout

if TYPE_CHECKING:
    from ..autodiff import GradientProgram
    from ..autodiff.higher_order import DerivedGraph, DerivedProgram, HessianVectorProgram
    from ..autodiff.reverse import GradientGraph
    from ..autodiff.staged import Carry, StagedProgram

# imported when a data-driven method runs, not with the rescale command (nor onnxruntime)
_autodiff = lazy_module("onnxinit.autodiff")
_higher_order = lazy_module("onnxinit.autodiff.higher_order")
_staged = lazy_module("onnxinit.autodiff.staged")
_inner = lazy_module("onnxinit.autodiff.inner")
_scaled = lazy_module("onnxinit.autodiff.scaled")
_execution = lazy_module("onnxinit.autodiff.execution")
_blocked = lazy_module("onnxinit.autodiff.blocked")
_runtime = lazy_module("onnxinit.runtime")

HVP_MODES = ("auto", "exact", "fd")


def _refused() -> tuple[type[BaseException], ...]:
    """What building or loading a second-order graph raises where the autodiff or onnxruntime
    cannot (onnxruntime's error types, imported when one is being handled)."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
    except ImportError:  # no onnxruntime: runtime.make_session refuses with the install command
        return (OnnxInitError,)
    return (OnnxInitError, ort_errors.Fail, ort_errors.InvalidGraph, ort_errors.NotImplemented,
            ort_errors.InvalidArgument)


def unit_roundoff(dtype: str) -> float:
    return float(np.finfo(np.float64 if dtype == "float64" else np.float32).eps)


class GradientOracle:
    """Loss gradients of ``model`` w.r.t. its ``wrt`` parameters on flat vectors, exact
    higher-order programs, and the difference formulas (2) and (3). ``passes`` counts gradient
    passes, ``exact_passes`` runs of exact higher-order programs; ``hvp_note`` says how products
    were computed."""

    def __init__(
        self,
        model: onnx.ModelProto,
        source: DataSource,
        wrt: Sequence[str],
        *,
        device: str = "auto",
        dtype: str = "float32",
        hvp: str = "auto",
        threads: int | None = None,
        scaled_convolutions: bool = True,
        blocked_convolutions: bool = True,
    ):
        if hvp not in HVP_MODES:
            raise InvalidOptionError(f"hvp must be auto, exact or fd, not {hvp!r}")
        self.model, self.source, self.wrt = model, source, tuple(wrt)
        self.device, self.dtype, self.threads, self.hvp_mode = device, dtype, threads, hvp
        self.scaled_convolutions = scaled_convolutions
        self.blocked_convolutions = blocked_convolutions
        self.hvp_note = "finite differences of gradients" if hvp == "fd" else ""
        self._programs: dict[int, GradientProgram] = {}
        self._derived: dict[tuple, DerivedProgram | None] = {}
        self._graphs: dict[tuple, DerivedGraph | None] = {}
        self._products: dict[int, HessianVectorProgram | None] = {}
        self._staged: dict[tuple, StagedProgram | None] = {}
        self._directional: dict[tuple[int, bool], object] = {}
        self.passes = 0
        self.exact_passes = 0
        first = self.program(source.batch_size)
        self.values = {name: first.parameters[name] for name in self.wrt}
        self.layout = Layout.of(self.values)
        u = unit_roundoff(dtype)
        self.rel_first = u ** (1.0 / 3.0)
        self.rel_second = u ** 0.25

    def program(self, batch_size: int) -> GradientProgram:
        if batch_size not in self._programs:
            shapes = {name: (batch_size, *shape[1:]) for name, shape in self.source.shapes.items()}
            label_shape = None
            if self.source.label_shape is not None:
                label_shape = (batch_size, *tuple(self.source.label_shape)[1:])
            self._programs[batch_size] = _autodiff.GradientProgram(
                self.model, shapes, loss=self.source.loss, output=self.source.output,
                wrt=list(self.wrt), label_shape=label_shape, device=self.device,
                dtype=self.dtype, threads=self.threads)
        return self._programs[batch_size]

    def _exact(self, build: Callable[[], object]):
        """``build()``, or None where the autodiff or onnxruntime cannot (``hvp='exact'``:
        the error); ``hvp_note`` records which."""
        if self.hvp_mode == "fd":
            return None
        try:
            built = build()
        except _refused() as exc:
            if self.hvp_mode == "exact":
                raise
            self.hvp_note = f"finite differences of gradients ({exc})"
            return None
        if not self.hvp_note:
            self.hvp_note = "exact (reverse over reverse)"
        return built

    def products(self, batch_size: int) -> HessianVectorProgram | None:
        """The exact Hessian-vector product for this batch size, or None."""
        if batch_size not in self._products:
            self._products[batch_size] = self._exact(
                lambda: _higher_order.HessianVectorProgram(self.program(batch_size)))
        return self._products[batch_size]

    def _scaling(self, batch_size: int, scaled: bool) -> bool:
        """Whether programs asked for with ``scaled`` get their convolutions rewritten."""
        return (scaled and self.scaled_convolutions
                and self.program(batch_size).backend == "onnxruntime")

    def _blocking(self, batch_size: int) -> bool:
        """Whether this batch size's programs get blocked convolutions (module docstring):
        float32 on onnxruntime's CPU provider alone."""
        program = self.program(batch_size)
        return (self.blocked_convolutions and program.backend == "onnxruntime"
                and not program.float64
                and _runtime.providers(self.device) == ["CPUExecutionProvider"])

    def _transform(self, batch_size: int, scaled: bool
                   ) -> Callable[[onnx.ModelProto], onnx.ModelProto] | None:
        """The value-preserving rewrite of this batch size's programs: scaled convolutions
        (``scaled``), then blocked ones; None where neither applies."""
        scaled, blocked = self._scaling(batch_size, scaled), self._blocking(batch_size)
        if not (scaled or blocked):
            return None

        def transform(model: onnx.ModelProto) -> onnx.ModelProto:
            if scaled:
                model = _scaled.rewrite(model, self.values)
            return _blocked.rewrite(model) if blocked else model

        return transform

    def _rewritten(self, graph: DerivedGraph, transform) -> DerivedGraph:
        model = transform(graph.model)
        added = tuple(v.name for v in model.graph.input[len(graph.model.graph.input):])
        return type(graph)(model, graph.wrt, graph.tensors, graph.inputs + added,
                           graph.elem_type)

    def derived(self, key: str, batch_size: int, make: Callable[[GradientGraph], DerivedGraph],
                *, scaled: bool = False) -> DerivedProgram | None:
        """An exact program ``make(gradient graph)`` for this batch size (cached under
        ``key``), or None where the autodiff cannot build it (or ``hvp='fd'``). ``scaled``:
        with scaled convolutions (module docstring); run it with ``scales``."""
        scaled = self._scaling(batch_size, scaled)
        cached = (key, batch_size, scaled, self._blocking(batch_size))
        if cached not in self._derived:
            program = self.program(batch_size)
            graph = self.derived_graph(key, batch_size, make)
            transform = self._transform(batch_size, scaled)
            if graph is not None and transform is not None:
                graph = self._rewritten(graph, transform)
            self._derived[cached] = None if graph is None else \
                self._exact(lambda: _higher_order.DerivedProgram(
                    graph, device=self.device, float64=program.float64, threads=self.threads,
                    backend=program.backend))
        return self._derived[cached]

    def derived_graph(self, key: str, batch_size: int,
                      make: Callable[[GradientGraph], DerivedGraph]) -> DerivedGraph | None:
        """``make(gradient graph)`` as built (no rewrite; cached), or None where the autodiff
        cannot (or ``hvp='fd'``)."""
        if (key, batch_size) not in self._graphs:
            self._graphs[key, batch_size] = self._exact(
                lambda: make(self.program(batch_size).graph))
        return self._graphs[key, batch_size]

    def staged(self, key: str, batch_size: int, make: Callable[[GradientGraph], DerivedGraph],
               *, scaled: bool = False, along_values: bool = False) -> StagedProgram | None:
        """The two stages (:mod:`onnxinit.autodiff.staged`) of the exact program
        ``derived(key, batch_size, make)`` giving its ``dphi`` tensors, or None where there is
        no exact program or it cannot be split. ``scaled``: as :meth:`derived`.
        ``along_values``: stage 2 gives only ``<dphi_i, p0_i>`` per tensor (read them with
        :meth:`rest_along_values`), without forming convolution weight gradients
        (:mod:`onnxinit.autodiff.inner`)."""
        scaled = self._scaling(batch_size, scaled)
        cached = (key, batch_size, scaled, self._blocking(batch_size), along_values)
        if cached not in self._staged:
            graph = self.derived_graph(key, batch_size, make)
            role = "dphi"
            if graph is not None and along_values:
                try:
                    graph, role = _inner.with_inner_products(graph, "dphi", self.values), \
                        "dphi.dir"
                except (*_refused(), onnx.shape_inference.InferenceError):
                    pass  # the full dphi, reduced here (rest_along_values)
            self._staged[cached] = None if graph is None else \
                _staged.staged_or_none(self.program(batch_size), graph,
                                       [f"{role}:{n}" for n in self.wrt],
                                       transform=self._transform(batch_size, scaled))
        return self._staged[cached]

    def staged_products(self, batch_size: int) -> StagedProgram | None:
        """The two stages of the exact Hessian-vector product, or None."""
        key = ("products", batch_size, self._blocking(batch_size))
        if key not in self._staged:
            exact = self.products(batch_size)
            self._staged[key] = None if exact is None else _staged.staged_or_none(
                exact.program, exact.graph, [f"dphi:{n}" for n in self.wrt],
                transform=self._transform(batch_size, False))
        return self._staged[key]

    def feeds(self, theta: np.ndarray, batch: Batch,
              scales: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """A program's inputs at theta on ``batch``; with ``scales`` (one multiplier per tensor
        of the layout, theta = scales * p0) also the scale inputs of scaled programs."""
        program = self.program(batch_length(batch))
        dtype = program.parameters[self.wrt[0]].dtype
        # one cast of the whole vector: the tensors are views of it (one pass, not one a tensor)
        feeds = program.session_feeds(batch.feeds, batch.labels,
                                      self.layout.split(np.asarray(theta, dtype=dtype)))
        if scales is not None:
            feeds.update({_scaled.scale_input(name): np.asarray(value, dtype=dtype)
                          for name, value in zip(self.layout.names, scales)})
        return feeds

    def first_stage(self, staged: StagedProgram, theta: np.ndarray, batch: Batch,
                    scales: np.ndarray | None = None) -> tuple[float, np.ndarray, Carry]:
        """(L(batch; theta), dL/dtheta, what stage 2 needs): a gradient pass (``scales``: see
        :meth:`feeds`)."""
        loss, grads, carry = staged.first(self.feeds(theta, batch, scales))
        self.passes += 1
        return loss, self.layout.join(grads), carry

    def rest_stage(self, staged: StagedProgram, carry: Carry,
                   extra: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """The flat ``dphi`` of stage 2 (``extra``: the derived graph's own inputs by role)."""
        dtype = staged.program.parameters[self.wrt[0]].dtype
        feeds = {staged.derived.tensors[role]: np.asarray(value, dtype=dtype)
                 for role, value in (extra or {}).items()}
        self.exact_passes += 1
        return self.join(staged.rest(carry, feeds), "dphi")

    def rest_along_values(self, staged: StagedProgram, carry: Carry) -> np.ndarray:
        """Per tensor of the layout, ``<dphi_i, p0_i>`` from stage 2 of a program staged with
        ``along_values``."""
        self.exact_passes += 1
        out = staged.rest(carry, {})
        if f"dphi:{self.wrt[0]}" in out:  # the inner products could not be built into it
            return self.layout.segment_dot(self.join(out, "dphi"), self.layout.join(self.values))
        return np.array([float(out[f"dphi.dir:{name}"]) for name in self.wrt])

    def run(self, derived: DerivedProgram, theta: np.ndarray, batch: Batch,
            roles: Sequence[str], scales: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The tensors of ``roles`` from one run of an exact program at theta (``scales``: see
        :meth:`feeds`)."""
        self.exact_passes += 1
        return derived.run(self.feeds(theta, batch, scales), roles)

    def join(self, tensors: Mapping[str, np.ndarray], prefix: str) -> np.ndarray:
        """The flat vector of the per-parameter tensors ``<prefix>:<name>``."""
        return self.layout.join({name: tensors[f"{prefix}:{name}"] for name in self.wrt})

    def gradient(self, theta: np.ndarray, batch: Batch) -> tuple[float, np.ndarray]:
        """(L(batch; theta), dL/dtheta) with theta and the gradient flat."""
        program = self.program(batch_length(batch))
        loss, grads = program.gradients(batch.feeds, batch.labels, self.layout.split(theta))
        self.passes += 1
        return loss, self.layout.join(grads)

    def directional(self, theta: np.ndarray, batch: Batch) -> tuple[float, np.ndarray]:
        """(L(batch; theta), <dL/dtheta_i, p0_i> for every tensor i of the layout): the
        gradient's inner products with the initial values, from a program that forms no
        convolution weight gradient (:func:`onnxinit.autodiff.scaled.directional`); where that
        program is not used (``scaled_convolutions`` off, not onnxruntime), from a gradient
        pass. Any theta."""
        n = batch_length(batch)
        if not self._scaling(n, True):
            loss, g = self.gradient(theta, batch)
            return loss, self.layout.segment_dot(g, self.layout.join(self.values))
        cached = (n, self._blocking(n))
        if cached not in self._directional:
            program = self.program(n)
            model = _scaled.directional(program.graph.model, self.wrt, self.values)
            if cached[1]:
                model = _blocked.rewrite(model)
            self._directional[cached] = _execution.Runner(
                model, device=self.device, float64=program.float64, threads=self.threads,
                backend=program.backend)
        results = self._directional[cached].run(self.feeds(theta, batch))
        self.passes += 1
        return float(results[0]), np.array([float(r) for r in results[1:]])

    def _step(self, theta: np.ndarray, v: np.ndarray, rel: float) -> float:
        v_norm = float(np.linalg.norm(v))
        return rel * (1.0 + float(np.linalg.norm(theta))) / v_norm if v_norm else 0.0

    def gradient_kept(self, theta: np.ndarray,
                      batch: Batch) -> tuple[float, np.ndarray, Carry | None]:
        """(L, dL/dtheta, what a later :meth:`hvp` at the same theta and batch reuses, or None
        where products are not exact or cannot be staged)."""
        staged = self.staged_products(batch_length(batch))
        if staged is None:
            return (*self.gradient(theta, batch), None)
        return self.first_stage(staged, theta, batch)

    def hvp(self, theta: np.ndarray, v: np.ndarray, batch: Batch,
            carry: Carry | None = None) -> np.ndarray:
        """H(theta) v: exact where possible (from ``carry`` of :meth:`gradient_kept` at this
        theta and batch when given: the second stage only), else the central difference
        (2)."""
        if carry is not None:
            staged = self.staged_products(batch_length(batch))
            return self.rest_stage(staged, carry, {f"v:{name}": part for name, part in
                                                   self.layout.split(v).items()})
        exact = self.products(batch_length(batch))
        if exact is not None:
            self.exact_passes += 1
            return self.layout.join(exact(self.layout.split(theta), self.layout.split(v),
                                          batch.feeds, batch.labels))
        e = self._step(theta, v, self.rel_first)
        if e == 0.0:
            return np.zeros_like(theta)
        _, plus = self.gradient(theta + e * v, batch)
        _, minus = self.gradient(theta - e * v, batch)
        return (plus - minus) / (2.0 * e)

    def third(self, theta: np.ndarray, a: np.ndarray, b: np.ndarray, batch: Batch) -> np.ndarray:
        """grad_theta (a' H(theta) b) with a, b held fixed: a first difference of exact
        products, or the second difference (3)."""
        if self.products(batch_length(batch)) is not None:
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
