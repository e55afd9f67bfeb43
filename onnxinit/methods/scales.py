"""The scales of the scale-optimising methods (GradInit, MetaInit, NIO): which parameter
tensors get one, their bounds, and flat float64 vectors of the differentiated parameters.

Every scalable parameter tensor ``p0_i`` of non-zero norm gets one scalar ``alpha_i`` (starting
at 1), and ``p_i = alpha_i * p0_i``. For any objective ``F(theta)`` the chain rule gives

    dF/dalpha_i = <dF/dp_i, p0_i>                                   (1)

Lower bounds: ``min_scale`` for weights (and every tensor that is not a bias), 0 for biases and
normalisation shifts. Tensors of norm 0 are skipped: they cannot be rescaled (they still take
part in every gradient pass).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ..errors import InvalidOptionError, UnsupportedModelError
from ..graph import ModelGraph

BIAS_ROLES = frozenset({"bias", "shift"})


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
        out = np.empty(self.size)
        for i, n in enumerate(self.names):  # cast while copying: no float64 temporaries
            out[self.offsets[i]:self.offsets[i + 1]] = np.ravel(arrays[n])
        return out

    def split(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        """Name -> view of ``vector`` reshaped to the tensor's shape."""
        return {n: vector[self.offsets[i]:self.offsets[i + 1]].reshape(self.shapes[i])
                for i, n in enumerate(self.names)}

    @cached_property
    def ids(self) -> np.ndarray:
        """The tensor index of every element."""
        return np.repeat(np.arange(len(self.names)), self.sizes)

    def segment_dot(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Per tensor i: <a_i, b_i>."""
        sizes = self.sizes
        if not len(sizes) or not sizes.all():  # reduceat reads an empty segment's next element
            return np.bincount(self.ids, weights=a * b, minlength=len(self.names))
        return np.add.reduceat(a * b, self.offsets[:-1])

    def expand(self, per_tensor: np.ndarray) -> np.ndarray:
        """A per-tensor value repeated over each tensor's elements."""
        return np.repeat(per_tensor, self.sizes)


def scalable_parameters(graph: ModelGraph) -> dict[str, set[str]]:
    """Parameter name -> roles, from the model's parameter table: every learnable float tensor
    (weights and biases of Conv/ConvTranspose/Gemm/MatMul and Add/Sub biases, normalisation
    scales and shifts, embedding tables, PRelu slopes), without the fixed constants (a tensor
    used only as a Mul/Div operand: GELU's 0.5, attention's 1/sqrt(d))."""
    table = graph.table
    return {name: param.roles for name, param in table.parameters.items()
            if not table.is_fixed_constant(name)}


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

    def tensor_scales(self, alpha: np.ndarray) -> np.ndarray:
        """The multiplier of every tensor of the layout: alpha_i, or 1 for unscaled ones."""
        per_tensor = np.ones(len(self.layout.names))
        per_tensor[self.index] = alpha
        return per_tensor

    def multipliers(self, alpha: np.ndarray) -> np.ndarray:
        return self.layout.expand(self.tensor_scales(alpha))

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
