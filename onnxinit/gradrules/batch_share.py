"""What a training-mode BatchNormalization's batch fixes, for the BatchNorm backward rule
(:mod:`.normalization`): on the forward side the spread of its input's batch mean and the law
of batch-standardized values, on the backward side the part of its output gradient whose
batch mean is exactly zero. Measured against float64 autograd on torchvision ResNets at
batch 8 (docs/design.md, "The backward analysis").

**The input** (:class:`BatchLaw`, :func:`input_law`). ``E[sigma_b^2] = s P (1 - r / M)``, P
the forward's variance over all values. ``r = B M / P`` (B the variance of the batch mean;
1 for independent values): after a BatchNorm the batch mean is fixed, and the layers after
keep most of that. A BatchNorm's output has ``(r1, r2) = (0, 0)`` (``r2``: the same for the
mean square); ``f(a)`` element-wise (a ReLU), with the Hermite coefficients of f over a's
Gaussian ``c1 = E[f z]``, ``c2 = E[f (z^2 - 1)] / sqrt 2`` (the batch fixes ``sum z`` and
``sum z^2``): ``r1' = (c1^2 r1 + c2^2 r2 + Var f - c1^2 - c2^2) / Var f``, ``r2' = 1``; a
linear map (Conv, Gemm, MatMul by a constant) keeps r1 (``r2' = 1``: its cross terms move the
mean square); a strided map to s_out of a sample's s_in positions, with rho the correlation
between a sample's positions, ``r' = 1 + (s_out - 1) rho + (s_out / s_in)(r - 1 - (s_in - 1)
rho)`` (:func:`fewer_positions`); a sum of independent signals mixes by variance,
``r1 = sum r1_i P_i / P``, ``r2 = (sum r2_i P_i^2 + sum_{i != j} P_i P_j) / P^2``.
Measured r: 0.026 after ``Conv(relu(BN))`` on 1x1 maps (this gives 0.033), 0.13-0.3 on 2x2 to
8x8 maps (border taps), 0.16-0.2 after the residual stream's ReLU (0.15-0.23), 0.6 after a
stride-2 Conv (0.79: the forward's position correlation is about 0, and what holds each
position's batch mean is not modelled). ``s``: ``relu(x_hat)`` of M batch-standardized values
(x_hat a coordinate of a direction in M - 1 dimensions, :func:`sphere_variance`) has 3.5% less
variance at M = 8 than relu of a Gaussian, which the forward assumes; s is that ratio for a
ReLU of a BatchNorm's output, kept through linear maps and mixed by variance at sums.

**The output gradient's batch-centred part** (:class:`Centred`). A BatchNorm's input gradient
has exactly zero batch mean per channel (the projection removes it). Through a Conv or a dense
layer by constant weights it stays so (``pure``: exact for 1x1 kernels and 1x1 maps, up to the
border taps otherwise). Through an element-wise ``dy = f'(a) g`` with g pure and independent
of a (``act``): the batch mean of dy is ``mean(f' g)``, of variance
``E[g^2] Var[f'] (1 + (S u / v - 1) rho_gate) / M`` (S positions, u / v the share of g's
variance in its sample means, rho_gate the correlation of f' between a sample's positions),
not ``E[dy^2] / M``; its component along the next BatchNorm's x_hat
``E[g^2] (E[f'^2 z^2] - E[f' z]^2) / (M - 1)`` (z = a standardized; ReLU: 0.50 and 0.68 of
``E[dy^2] / M``, measured 0.46-0.69 and 0.64-0.80). Shares of ``E[dy^2]``: ``pure``, ``act``,
``mean`` and ``deficit = act (1 - (E[f'^2 z^2] - E[f' z]^2) / E[f'^2])``; through the operand y
of ``a = y + s`` (independent) z's correlation with y's own standardized value is
``rho^2 = Var y / Var a``, so ``deficit' = rho^2 deficit``; forks mix by second moments; a
second element-wise map or a linear map drops ``act``; every other rule drops the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import factorial

import numpy as np

MAX_DEPTH = 24
MAX_SPHERE = 4096  # values per channel above which the batch law is Gaussian
LINEAR = {"Conv", "Gemm", "MatMul"}
PASSING = {"Identity", "Dropout", "Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze"}


def _grid(n: int = 320) -> tuple[np.ndarray, np.ndarray]:
    z = np.linspace(-8.0, 8.0, n + 1)
    z = (z[:-1] + z[1:]) / 2
    w = np.exp(-z * z / 2)
    return z, w / w.sum()


_Z, _W = _grid()


def _standard(mean, var) -> tuple[np.ndarray, np.ndarray]:
    """(z grid [K], values mean + sd z [K]) of the Gaussian with the channels' average mean and
    variance (the shares below are averages over channels of close laws)."""
    m = float(np.mean(mean))
    sd = float(np.sqrt(max(float(np.mean(var)), 0.0)))
    return _Z, m + sd * _Z


def hermite_shares(fn, mean, var) -> tuple[float, float, float]:
    """(Var f, c1^2, c2^2) of f(a), a Gaussian with the channels' average mean and variance:
    ``c1 = E[f z]``, ``c2 = E[f (z^2 - 1)] / sqrt 2``."""
    z, a = _standard(mean, var)
    with np.errstate(all="ignore"):
        f = np.nan_to_num(fn(a))
    ef = _W @ f
    c1 = _W @ (f * z)
    c2 = _W @ (f * (z * z - 1)) / np.sqrt(2)
    return float(_W @ (f * f) - ef**2), float(c1**2), float(c2**2)


def relu(a):
    return np.maximum(a, 0.0)


def _total(forward, name) -> tuple[float, float]:
    m = forward.get(name)
    return (0.0, 1.0) if m is None else m.total()


def _positions(graph, name) -> int | None:
    shape = graph.shapes.get(name)
    if shape is None:
        return None
    spatial = tuple(shape[2:])
    if any(not isinstance(d, (int, np.integer)) for d in spatial):
        return None
    return int(np.prod(spatial)) if spatial else 1


def pair_mean(x, shape, fn=lambda rho: rho) -> float:
    """The mean of ``fn(rho)`` over the pairs of distinct positions of one sample, rho their
    correlation (the forward's spatial correlation by offset averaged over channels, its floor
    beyond the stored offsets; 0 where absent)."""
    corr = x.spatial.corr if x is not None and x.spatial is not None else None
    sizes = [int(d) for d in shape[2:]] if shape is not None else []
    if not sizes or int(np.prod(sizes)) <= 1:
        return 0.0
    if corr is None:
        return float(fn(0.0))
    rho = np.asarray(corr.rho, dtype=np.float64)
    rho = rho.reshape(rho.shape[0], -1).mean(0).reshape(rho.shape[1:])
    floor = float(np.mean(corr.floor))
    radius = [(n - 1) // 2 for n in rho.shape]
    if len(radius) != len(sizes):
        return float(fn(0.0))
    offsets = [np.arange(1 - n, n) for n in sizes]
    counts = np.ones(())
    values = np.full([2 * n - 1 for n in sizes], floor)
    for axis, (d, n) in enumerate(zip(offsets, sizes)):
        counts = np.multiply.outer(counts, (n - np.abs(d)).astype(np.float64))
    inside = tuple(slice(max(n - 1 - r, 0), n - 1 + r + 1) for n, r in zip(sizes, radius))
    stored = tuple(slice(max(r - (n - 1), 0), r + min(r, n - 1) + 1)
                   for n, r in zip(sizes, radius))
    values[inside] = rho[stored]
    counts[tuple(n - 1 for n in sizes)] = 0.0  # the position with itself
    total = counts.sum()
    return float((counts * fn(values)).sum() / total) if total > 0 else float(fn(0.0))


def fewer_positions(r: float, rho: float, s_in: int, s_out: int) -> float:
    """r of the batch mean of a map to s_out of a sample's s_in positions (a strided Conv):
    with a correlation rho between a sample's positions and the sum over all N s_in values
    fixed as r says, ``r' = 1 + (s_out - 1) rho + (s_out / s_in)(r - 1 - (s_in - 1) rho)``
    (exact for a subset of positions; a Conv's distinct taps per position, as independent
    weights, average the cross-position terms to the same)."""
    return max(1.0 + (s_out - 1) * rho + (s_out / s_in) * (r - 1.0 - (s_in - 1) * rho), 0.0)


@dataclass(frozen=True)
class BatchLaw:
    """What a batch fixes of a tensor's values (module docstring): ``r1``, ``r2`` the spread
    of its batch mean and mean square relative to independent values, ``scale`` the true
    variance over the forward prediction."""

    r1: float = 1.0
    r2: float = 1.0
    scale: float = 1.0


FREE = BatchLaw()


def sphere_variance(mean: float, sd: float, count: int) -> float | None:
    """Var[relu(mean + sd x_hat)] for x_hat one of ``count`` values standardized by their
    batch: ``x_hat = sqrt(count - 1) t`` with ``t`` a coordinate of a uniform direction in
    count - 1 dimensions, density ``(1 - t^2)^((count - 4) / 2)``; None below 4 values."""
    if count < 4:
        return None
    edges = np.linspace(-1.0, 1.0, 2 * len(_Z) + 1)
    t = (edges[:-1] + edges[1:]) / 2
    w = (1.0 - t * t) ** ((count - 4) / 2.0)
    w /= w.sum()
    f = relu(mean + sd * np.sqrt(count - 1.0) * t)
    return float(w @ (f * f) - (w @ f) ** 2)


def _batch_count(graph, name: str, batch: int) -> int | None:
    positions = _positions(graph, name)
    return None if positions is None else batch * positions


def _relu_law(graph, forward, source: str, inner: BatchLaw,
              batch: int) -> BatchLaw:
    mean, var = _total(forward, source)
    var_f, c1, c2 = hermite_shares(relu, mean, var)
    if var_f <= 0:
        return FREE
    rest = max(var_f - c1 - c2, 0.0)
    r1 = min((c1 * inner.r1 + c2 * inner.r2 + rest) / var_f, 1.0)
    scale = 1.0
    producer = graph.producer.get(source)
    count = _batch_count(graph, source, batch)
    if (producer is not None and graph.node(producer).op_type == "BatchNormalization"
            and count is not None and count < MAX_SPHERE):
        exact = sphere_variance(mean, float(np.sqrt(max(var, 0.0))), count)
        if exact is not None and var_f > 0:
            scale = exact / var_f
    return BatchLaw(r1, 1.0, scale)


def input_law(graph, forward, name: str, batch: int, depth: int = 0) -> BatchLaw:
    """The :class:`BatchLaw` of tensor ``name`` (module docstring); independent values where
    the graph is not followed."""
    producer = graph.producer.get(name)
    if producer is None or depth > MAX_DEPTH:
        return FREE
    node = graph.node(producer)
    op = node.op_type
    signals = [t for t in node.input if t and graph.is_signal(t)]
    if op == "BatchNormalization":
        return BatchLaw(0.0, 0.0)
    if op in PASSING and signals:
        return input_law(graph, forward, signals[0], batch, depth + 1)
    if op == "Relu" and len(signals) == 1:
        inner = input_law(graph, forward, signals[0], batch, depth + 1)
        return _relu_law(graph, forward, signals[0], inner, batch)
    if op in LINEAR and len(signals) == 1 and node.input[0] == signals[0]:
        inner = input_law(graph, forward, signals[0], batch, depth + 1)
        s_in, s_out = _positions(graph, signals[0]), _positions(graph, name)
        if s_in is None or s_out is None:
            return FREE
        r1 = inner.r1
        if s_out < s_in:
            rho = pair_mean(forward.get(signals[0]), graph.shapes.get(signals[0]))
            r1 = fewer_positions(r1, rho, s_in, s_out)
        return BatchLaw(r1, 1.0, inner.scale)
    if op in ("Add", "Sub") and len(node.input) == 2:
        if len(signals) == 1:
            return input_law(graph, forward, signals[0], batch, depth + 1)
        if graph.shapes.get(node.input[0]) != graph.shapes.get(node.input[1]):
            return FREE
        parts = [(input_law(graph, forward, t, batch, depth + 1), _total(forward, t)[1])
                 for t in node.input]
        total = sum(p for _, p in parts)
        if total <= 0:
            return FREE
        cross = total**2 - sum(p * p for _, p in parts)
        return BatchLaw(sum(law.r1 * p for law, p in parts) / total,
                        (sum(law.r2 * p * p for law, p in parts) + cross) / total**2,
                        sum(law.scale * p for law, p in parts) / total)
    return FREE


@dataclass(frozen=True)
class Centred:
    """Shares of a gradient's ``E[dy^2]`` (module docstring)."""

    pure: float = 0.0
    act: float = 0.0
    mean: float = 0.0
    deficit: float = 0.0

    @classmethod
    def whole(cls) -> Centred:
        return cls(pure=1.0)

    def linear(self) -> Centred | None:
        """Through ``W^T dy``: the pure part stays batch-centred, the rest does not."""
        return Centred(pure=self.pure) if self.pure > 0 else None

    def operand(self, rho2: float) -> Centred:
        """For the operand y of ``a = y + s``, ``rho2 = Var y / Var a``."""
        return Centred(self.pure, self.act, self.mean, self.deficit * rho2)


def through_derivative(c: Centred | None, dfn, x, shape, sample_share: float) -> Centred | None:
    """``dx = dy f'(a)``: the pure part becomes ``act`` with f''s shares over a's Gaussian (the
    channels' average mean and variance); ``sample_share`` = u / Var of dy's sample means
    (S positions a sample), ``rho_gate`` the mean correlation of f' at two positions of a
    sample (Mehler: ``sum_k c_k^2 rho^k / Var f'``, ``c_k = E[f' He_k] / sqrt k!``)::

        mean = act Var[f'] / E[f'^2] (1 + (S u / v - 1) rho_gate)
    """
    if c is None or c.pure <= 0:
        return None
    z, a = _standard(x.mean, x.var)
    with np.errstate(all="ignore"):
        d = np.nan_to_num(dfn(a))
    p1, p2 = float(_W @ d), float(_W @ (d * d))
    k1, k2 = float(_W @ (d * z)), float(_W @ (d * d * z * z))
    var_d = p2 - p1 * p1
    if p2 <= 0:
        return None
    positions = int(np.prod(shape[2:])) if shape is not None and len(shape) > 2 else 1
    gate = 0.0
    if positions > 1 and var_d > 1e-12 * p2:
        hermite = [z, z * z - 1, z**3 - 3 * z, z**4 - 6 * z * z + 3]
        coefficients = [float(_W @ (d * h)) ** 2 / factorial(k + 1)
                        for k, h in enumerate(hermite)]
        gate = pair_mean(x, shape, lambda rho: sum(c2 * rho ** (k + 1)
                                                   for k, c2 in enumerate(coefficients)))
        gate = min(max(gate / var_d, 0.0), 1.0)
    coherent = 1.0 + max(positions * sample_share - 1.0, 0.0) * gate
    return Centred(act=c.pure, mean=c.pure * var_d / p2 * coherent,
                   deficit=c.pure * (1.0 - (k2 - k1**2) / p2))


def mixed(parts: list) -> Centred | None:
    """The field of a sum of independent gradients ``[(Centred | None, E[g^2])]``."""
    total = sum(w for _, w in parts)
    if total <= 0 or all(c is None for c, _ in parts):
        return None
    shares = [(c or Centred(), w / total) for c, w in parts]
    return Centred(*(sum(getattr(c, f) * w for c, w in shares)
                     for f in ("pure", "act", "mean", "deficit")))


def removed(c: Centred | None, v, u, n: int, m_count: int):
    """(the batch mean's, x_hat's) share of Var[dy] that the projection removes, per channel.
    The plain part ``(1 - s) v`` (s = pure + act) as in :mod:`.normalization`: ``u_p / N`` and
    ``((1 - s) v - u_p / N) / (M - 1)`` with ``u_p = min(u, (1 - s) v)`` (the centred part's
    sample means are centred over the batch: dy's u is taken as the plain part's); the centred
    part ``mean v / M`` and ``(s - deficit) v / (M - 1)``."""
    s = 0.0 if c is None else min(c.pure + c.act, 1.0)
    plain = (1.0 - s) * v
    u_plain = np.minimum(u, plain)
    plain_mean = u_plain / n
    plain_xhat = np.maximum(plain - u_plain / n, 0.0) / max(m_count - 1, 1)
    if c is None:
        return plain_mean, plain_xhat
    return (plain_mean + c.mean * v / m_count,
            plain_xhat + max(s - c.deficit, 0.0) * v / max(m_count - 1, 1))
