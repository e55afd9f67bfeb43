"""Piecewise-polynomial element-wise chains, read from their keys: moments and Hermite amplitudes
on a Gaussian in closed form.

A chain of affine maps, ReLU, LeakyReLU and Clip with scalar constants is piecewise linear in
its input; a Mul, Add or Sub of two such chains of one tensor (a fused binary node,
:mod:`.fusion`: HardSwish as tf2onnx writes Keras', ``x * (Relu6(x + 3) * (1/6))``) is piecewise
quadratic. On ``x ~ N(m, s^2)`` each piece is a polynomial ``e_0 + e_1 z + e_2 z^2`` of the
standard normal ``z`` over an interval, so the moments are sums of partial moments
(:func:`.gaussian.piecewise_closed`) and so are the Hermite amplitudes Mehler's formula needs
(:func:`onnxinit.mehler.piecewise_hermite_amplitudes`): exact where the composite quadrature
over 768-3072 nodes per element was 1e-3 off at a kink, and a few array operations per piece
instead of one function evaluation per node.
"""

from __future__ import annotations

import math
from functools import partial

from .gaussian import piecewise_closed

_INF = math.inf


def _scalar(key, start: int) -> list[float] | None:
    values = list(key[start:])
    return values if values and all(isinstance(v, float) for v in values) else None


def _outer(key) -> tuple[list[float], list[tuple[float, float]]] | None:
    """A piecewise-linear g(y) of one key: (breakpoints, [(d0, d1)] per segment between them,
    left to right); None for any other key."""
    kind = key[0]
    if kind == "Relu":
        return [0.0], [(0.0, 0.0), (0.0, 1.0)]
    if kind == "LeakyRelu":
        a = _scalar(key, 1)
        return None if a is None or len(a) != 1 else ([0.0], [(0.0, a[0]), (0.0, 1.0)])
    if kind == "Step":  # 1 above c (above = 1.0) or below it (above = 0.0), else 0
        b = _scalar(key, 1)
        if b is None or len(b) != 2:
            return None
        return [b[0]], [(1.0 - b[1], 0.0), (b[1], 0.0)]
    if kind == "Clip":
        b = _scalar(key, 1)
        if b is None or len(b) != 2:
            return None
        lo, hi = b
        points, segments = [], []
        if math.isfinite(lo):
            points.append(lo)
            segments.append((lo, 0.0))
        segments.append((0.0, 1.0))
        if math.isfinite(hi):
            points.append(hi)
            segments.append((hi, 0.0))
        return points, segments
    return None


def _affine(key) -> tuple[float, float] | None:
    """(a, b) of ``g(y) = a y + b`` for an affine key of a scalar constant; None otherwise."""
    if key[0] == "Identity":
        return 1.0, 0.0
    if key[0] != "Affine" or len(key) != 3 or not isinstance(key[2], float):
        return None
    op, c = key[1], key[2]
    return {"mul": (c, 0.0), "add": (1.0, c), "sub": (1.0, -c), "rsub": (-1.0, c),
            "div": (1.0 / c if c else _INF, 0.0)}.get(op)


def _probe(lo: float, hi: float) -> float:
    if math.isfinite(lo) and math.isfinite(hi):
        return 0.5 * (lo + hi)
    if math.isfinite(hi):
        return hi - 1.0
    return lo + 1.0 if math.isfinite(lo) else 0.0


def linear_pieces(keys) -> list[tuple[float, float, float, float]] | None:
    """``[(lo, hi, c0, c1)]``: the chain of ``keys`` is ``c0 + c1 x`` on ``[lo, hi)``, the
    pieces covering the real line; None when a key is not piecewise linear."""
    pieces = [(-_INF, _INF, 0.0, 1.0)]
    for key in keys:
        ab = _affine(key)
        if ab is not None:
            a, b = ab
            if not math.isfinite(a):
                return None
            pieces = [(lo, hi, a * c0 + b, a * c1) for lo, hi, c0, c1 in pieces]
            continue
        outer = _outer(key)
        if outer is None:
            return None
        points, segments = outer
        out = []
        for lo, hi, c0, c1 in pieces:
            cuts = sorted(x for x in ((p - c0) / c1 for p in points if c1 != 0) if lo < x < hi)
            edges = [lo, *cuts, hi]
            for l, h in zip(edges[:-1], edges[1:]):
                y = c0 + c1 * _probe(l, h)
                d0, d1 = segments[sum(y >= p for p in points)]
                out.append((l, h, d0 + d1 * c0, d1 * c1))
        pieces = out
    return pieces


def _at(pieces, x: float):
    """The piece holding x (a point strictly inside an interval of the merged edges)."""
    return next(p for p in pieces if p[0] <= x < p[1])


def fused_pieces(op: str, keys_a, keys_b) -> list[tuple[float, float, tuple]] | None:
    """``[(lo, hi, (c0, c1, c2))]`` of ``op(chain_a(x), chain_b(x))`` (Mul, Add, Sub) for two
    piecewise-linear chains; None otherwise."""
    if op not in ("Mul", "Add", "Sub"):
        return None
    pa, pb = linear_pieces(keys_a), linear_pieces(keys_b)
    if pa is None or pb is None:
        return None
    edges = sorted({-_INF, _INF, *(p[0] for p in pa + pb), *(p[1] for p in pa + pb)})
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        x = _probe(lo, hi)
        _, _, a0, a1 = _at(pa, x)
        _, _, b0, b1 = _at(pb, x)
        if op == "Mul":
            coef = (a0 * b0, a0 * b1 + a1 * b0, a1 * b1)
        else:
            sign = 1.0 if op == "Add" else -1.0
            coef = (a0 + sign * b0, a1 + sign * b1, 0.0)
        out.append((lo, hi, coef))
    return out


def chain_pieces(keys) -> list[tuple[float, float, tuple]] | None:
    """The pieces ``(lo, hi, (c0, c1, c2))`` of a chain: every key piecewise linear, or one
    fused key (``("Fused", op, keys_a, keys_b)``) of two such chains; None otherwise."""
    keys = list(keys)
    if len(keys) == 1 and keys[0][0] == "Fused" and len(keys[0]) == 4:
        _, op, keys_a, keys_b = keys[0]
        return fused_pieces(op, keys_a, keys_b)
    pieces = linear_pieces(keys)
    return None if pieces is None else [(lo, hi, (c0, c1, 0.0)) for lo, hi, c0, c1 in pieces]


def closed_moments(pieces):
    """``(mu, var) -> (E, Var)`` of the pieces (:func:`.gaussian.piecewise_closed`)."""
    return partial(piecewise_closed, pieces)
