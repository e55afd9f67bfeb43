"""The element-wise function one node computes (:class:`ElementwiseFn`), and those of
Mul/Add/Sub/Div/Pow with one constant operand (:func:`binary_function`): what
:mod:`.elementwise`'s rules apply, with what they can exploit (an exact affine map, a closed
form for a Gaussian input, a domain to guard, a piecewise-polynomial form)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..moments import Elementwise
from .context import RuleContext, RuleError
from .gaussian import expand
from .powers import gaussian_power, integer_power


@dataclass(frozen=True)
class ElementwiseFn:
    """An element-wise function of one node, with what the rule can exploit."""

    key: tuple
    fn: Callable
    affine: tuple | None = None  # (a, b): f(x) = a x + b exactly
    closed: Callable | None = None  # (mu, var) -> (E, Var) for a Gaussian input
    domain: str | None = None  # "positive", "nonnegative", "nonzero": guard the input
    pieces: tuple | None = None  # fn as a piecewise polynomial (Elementwise.pieces)

    @property
    def elementwise(self) -> Elementwise:
        return Elementwise(self.key, self.fn, self.pieces)


# key[0] of functions with no kink or jump (Gauss-Hermite converges fast)
SMOOTH = {
    "Identity", "Neg", "Affine", "Sigmoid", "Tanh", "Softplus", "Erf", "Exp", "Gelu", "Mish",
    "Swish", "Sin", "Cos", "Atan", "Sinh", "Cosh", "Asinh", "Celu1", "Elu1", "PowInt", "ExpBase",
}  # fmt: skip


def _smooth_key(key: tuple) -> bool:
    if key and key[0] == "Fused":
        return key[1] in ("Add", "Sub", "Mul") and all(_smooth_key(k) for k in key[2] + key[3])
    return bool(key) and key[0] in SMOOTH


def is_smooth(chain: Sequence[Elementwise]) -> bool:
    return all(_smooth_key(f.key) for f in chain)


def digest(a: np.ndarray) -> tuple:
    a = np.ascontiguousarray(a, dtype=np.float64)
    if a.size == 1:
        return (float(a.reshape(())),)
    return (a.shape, hashlib.sha1(a.tobytes()).hexdigest()[:16])


def rank_of(ctx: RuleContext) -> int | None:
    for name in list(ctx.node.output[:1]) + list(ctx.node.input[:1]):
        shape = ctx.graph.shape(name) if name else None
        if shape is not None:
            return len(shape)
    return None


def constant_input(ctx: RuleContext, index: int, rank: int | None) -> np.ndarray:
    value = ctx.const(index)
    if value is None:
        raise RuleError(f"input {index} is not constant")
    value = np.asarray(value, dtype=np.float64)
    if value.size > 1 and rank is None:
        raise RuleError("a non-scalar constant on a tensor of unknown rank")
    if value.size == 1:
        return value.reshape(())
    if value.size > 1 << 16:
        raise RuleError("a constant too large to track per element")
    return expand(value, rank)


def binary_function(ctx: RuleContext, rank: int | None, which: int) -> ElementwiseFn | None:
    """Mul/Add/Sub/Div/Pow where input ``which`` is the signal and the other a constant."""
    op = ctx.node.op_type
    c = constant_input(ctx, 1 - which, rank)
    d = digest(c)
    if op == "Mul":
        return ElementwiseFn(("Affine", "mul", *d), lambda x: x * c, affine=(c, 0.0))
    if op == "Add":
        return ElementwiseFn(("Affine", "add", *d), lambda x: x + c, affine=(1.0, c))
    if op == "Sub" and which == 0:
        return ElementwiseFn(("Affine", "sub", *d), lambda x: x - c, affine=(1.0, -c))
    if op == "Sub":
        return ElementwiseFn(("Affine", "rsub", *d), lambda x: c - x, affine=(-1.0, c))
    if op == "Div" and which == 0:
        return ElementwiseFn(("Affine", "div", *d), lambda x: x / c, affine=(1.0 / c, 0.0))
    if op == "Div":
        return ElementwiseFn(("RDiv", *d), lambda x: c / x, domain="nonzero")
    if op == "Pow" and which == 0:
        integer = bool(np.all(c == np.round(c)))
        if integer and np.all(c >= 0):
            return ElementwiseFn(("PowInt", *d), lambda x: integer_power(x, c),
                                 closed=gaussian_power(c))
        return ElementwiseFn(
            ("Pow", *d), lambda x: np.power(x, c), domain="nonzero" if integer else "positive"
        )
    if op == "Pow":
        if np.any(c <= 0):
            raise RuleError("Pow with a non-positive constant base")
        return ElementwiseFn(("ExpBase", *d), lambda x: np.power(c, x))
    return None


__all__ = ["SMOOTH", "ElementwiseFn", "binary_function", "constant_input", "digest", "is_smooth",
           "rank_of"]
