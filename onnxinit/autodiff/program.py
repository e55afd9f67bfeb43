"""Compiled gradient programs: a gradient graph and its session, reused across calls, so each
gradient pass costs one run; Hessian-vector products by central differences of gradients.
:func:`gradients` and :func:`hvp` are one-shot conveniences over a program."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

from .._loading import read_model
from ..errors import InvalidOptionError
from ..parameters import float_parameters
from .execution import Runner
from .loss import CrossEntropy, loss_head
from .reverse import GradientGraph, build_gradient_graph

Arrays = Mapping[str, np.ndarray]


def _as_model(model: onnx.ModelProto | str | os.PathLike) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    return read_model(model)[0]


class GradientProgram:
    """The gradient of a loss of ``model`` with respect to its parameters, compiled for fixed
    input shapes (``input_shapes``: input name -> shape; ``label_shape``: shape of the labels,
    by default the output's shape without its class axis, or the output's shape for 'mse').

    ``loss``: 'cross_entropy' (integer labels), 'mse' (float targets), 'output' (the model's
    output is the loss) or a head from :mod:`onnxinit.autodiff.loss`; ``output`` picks the model
    output it applies to (default: the first). ``wrt``: parameter names to differentiate (default:
    every float parameter). ``dtype='float64'`` casts the lowered graph to double and runs it on
    the CPU. ``dropout=True`` keeps Dropout as a fixed mask drawn from ``seed``. ``threads``:
    onnxruntime's intra-op threads (default: its own choice).
    """

    def __init__(
        self,
        model: onnx.ModelProto | str | os.PathLike,
        input_shapes: Mapping[str, Sequence[int]],
        *,
        loss="cross_entropy",
        output: str | None = None,
        wrt: Sequence[str] | None = None,
        label_shape: Sequence[int] | None = None,
        device: str = "auto",
        dtype: str = "float32",
        dropout: bool = False,
        seed: int = 0,
        threads: int | None = None,
    ):
        self._model = _as_model(model)
        self._options = {"loss": loss_head(loss, output), "label_shape": label_shape,
                         "dtype": dtype, "dropout": dropout, "seed": seed}
        self.input_shapes = {name: tuple(shape) for name, shape in input_shapes.items()}
        self.device = device
        self.threads = threads
        self.graph: GradientGraph = build_gradient_graph(
            self._model, self.input_shapes, wrt=wrt, **self._options)
        self.float64 = dtype == "float64"
        self._np_dtype = helper.tensor_dtype_to_np_dtype(self.graph.elem_type)
        self._runner = Runner(self.graph.model, device=device, float64=self.float64,
                              threads=threads)
        self._forward: Runner | None = None
        self.parameters: dict[str, np.ndarray] = {
            name: value.astype(self._np_dtype) if value.dtype.kind == "f" else value
            for name, value in float_parameters(self._model).items()
        }

    @property
    def wrt(self) -> tuple[str, ...]:
        return self.graph.wrt

    @property
    def backend(self) -> str:
        return self._runner.backend

    def session_feeds(self, feeds: Arrays, labels, params: Arrays | None) -> dict[str, np.ndarray]:
        """The gradient graph's inputs for one batch: model inputs (checked against the compiled
        shapes, floats cast to the program's dtype), labels or targets, and every parameter
        (``params`` overrides, else the model's values). For callers that run
        ``self.graph.model`` themselves (e.g. a second-order graph built on it)."""
        out = {}
        for name in self.graph.inputs:
            if name not in feeds:
                raise InvalidOptionError(f"no value fed for model input {name!r}")
            array = np.asarray(feeds[name])
            if array.shape != self.input_shapes[name]:
                raise InvalidOptionError(
                    f"input {name!r} has shape {array.shape}; this program was compiled for "
                    f"{self.input_shapes[name]}")
            out[name] = array.astype(self._np_dtype) if array.dtype.kind == "f" else array
        extra = set(feeds) - set(self.graph.inputs)
        if extra:
            raise InvalidOptionError(f"not inputs of the model: {', '.join(sorted(extra))}")
        if self.graph.target is not None:
            if labels is None:
                raise InvalidOptionError("this loss needs labels (or targets)")
            integer = isinstance(self._options["loss"], CrossEntropy)
            out[self.graph.target] = np.asarray(labels).astype(
                np.int64 if integer else self._np_dtype)
        for name, value in (params or {}).items():
            if name not in self.parameters:
                raise InvalidOptionError(f"{name!r} is not a float parameter of the model")
            value = np.asarray(value, dtype=self._np_dtype)
            if value.shape != self.parameters[name].shape:
                raise InvalidOptionError(f"parameter {name!r} has shape "
                                         f"{self.parameters[name].shape}, not {value.shape}")
            out[name] = value
        return out

    def gradients(
        self, feeds: Arrays, labels=None, params: Arrays | None = None
    ) -> tuple[float, dict[str, np.ndarray]]:
        """(loss, {parameter: gradient}) at ``params`` (overrides of the model's values)."""
        results = self._runner.run(self.session_feeds(feeds, labels, params))
        return float(results[0]), dict(zip(self.wrt, results[1:]))

    def loss(self, feeds: Arrays, labels=None, params: Arrays | None = None) -> float:
        """The loss alone, from a forward-only graph (built on first use)."""
        if self._forward is None:
            forward = build_gradient_graph(self._model, self.input_shapes, gradients=False,
                                           **self._options)
            self._forward = Runner(forward.model, device=self.device, float64=self.float64,
                                   threads=self.threads)
        return float(self._forward.run(self.session_feeds(feeds, labels, params))[0])

    def hvp(
        self,
        params: Arrays | None,
        v: Arrays,
        feeds: Arrays,
        labels=None,
        *,
        rel: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Hessian of the loss times ``v`` (parameter -> direction; missing entries are zero)
        at ``params`` (default: the model's values), by central differences of two gradient
        passes: ``(g(theta + eps v) - g(theta - eps v)) / (2 eps)``.

        The step is ``eps = rel (1 + ||theta||) / ||v||``, norms over all ``wrt`` parameters, so
        the perturbation ``eps v`` is ``rel`` relative to the parameters' size whatever the
        scale of ``v``. The default ``rel`` is the cube root of the unit roundoff of the
        program's dtype (4.8e-6 in float64, 4.9e-3 in float32), which balances the O(eps^2)
        truncation error of central differences against roundoff amplified by 1/eps.
        """
        theta = {name: np.asarray((params or {}).get(name, self.parameters[name]),
                                  dtype=self._np_dtype) for name in self.wrt}
        direction = {name: np.asarray(v.get(name, np.zeros_like(theta[name])),
                                      dtype=self._np_dtype) for name in self.wrt}
        v_norm = np.sqrt(sum(float(np.sum(d.astype(np.float64) ** 2))
                             for d in direction.values()))
        if v_norm == 0.0:
            return {name: np.zeros_like(value) for name, value in theta.items()}
        theta_norm = np.sqrt(sum(float(np.sum(t.astype(np.float64) ** 2))
                                 for t in theta.values()))
        if rel is None:
            rel = float(np.finfo(self._np_dtype).eps) ** (1.0 / 3.0)
        eps = rel * (1.0 + theta_norm) / v_norm
        fixed = {name: value for name, value in (params or {}).items() if name not in theta}
        _, plus = self.gradients(feeds, labels, {**fixed, **{
            n: theta[n] + eps * direction[n] for n in self.wrt}})
        _, minus = self.gradients(feeds, labels, {**fixed, **{
            n: theta[n] - eps * direction[n] for n in self.wrt}})
        return {name: (plus[name] - minus[name]) / (2.0 * eps) for name in self.wrt}


def gradients(
    model: onnx.ModelProto | str | os.PathLike,
    feeds: Arrays,
    *,
    loss="cross_entropy",
    output: str | None = None,
    labels=None,
    wrt: Sequence[str] | None = None,
    params: Arrays | None = None,
    device: str = "auto",
    dtype: str = "float32",
) -> tuple[float, dict[str, np.ndarray]]:
    """(loss, {initializer name: gradient}) for one batch; see :class:`GradientProgram`, which
    keeps the compiled graph and session for repeated calls."""
    program = GradientProgram(
        model, {name: np.shape(value) for name, value in feeds.items()}, loss=loss,
        output=output, wrt=wrt, label_shape=None if labels is None else np.shape(labels),
        device=device, dtype=dtype,
    )
    return program.gradients(feeds, labels, params)


def hvp(
    model: onnx.ModelProto | str | os.PathLike,
    params: Arrays | None,
    v: Arrays,
    feeds: Arrays,
    labels=None,
    *,
    loss="cross_entropy",
    output: str | None = None,
    dtype: str = "float32",
    device: str = "auto",
    rel: float | None = None,
) -> dict[str, np.ndarray]:
    """Hessian of the loss times ``v`` at ``params`` for one batch, by central differences of
    two gradient passes (see :meth:`GradientProgram.hvp`). One-shot: it compiles a program for
    the feeds' shapes; keep a :class:`GradientProgram` when calling it repeatedly."""
    program = GradientProgram(
        model, {name: np.shape(value) for name, value in feeds.items()}, loss=loss,
        output=output, wrt=list(v), label_shape=None if labels is None else np.shape(labels),
        dtype=dtype, device=device,
    )
    return program.hvp(params, v, feeds, labels, rel=rel)
