"""The moments and the Hermite amplitudes of a smooth chain on a Gaussian, from one evaluation.

An element-wise node with a smooth chain (Sigmoid, SiLU's ``x * Sigmoid(x)``, Tanh ...) on
position classes needs both ``(E[f], Var[f])`` (its moments, :func:`.gaussian.gaussian_moments`)
and ``a_n = E[f(mean + std z) He_n(z)]``, n = 1..8 (Mehler's formula for its spatial
correlation, :func:`onnxinit.mehler.hermite_amplitudes`), both by the same 96-node
Gauss-Hermite rule over the same cells: :func:`moments_and_amplitudes` evaluates ``f`` once
per node and cell for all of them (the nine weighted sums as one matrix product per block of
nodes small enough to stay in cache), and keeps the amplitudes of its last calls
(:func:`recall`) for the correlation rule that follows the moment rule.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from .cell_blocks import broadcasts_nothing, column_blocks, small_gemm_width
from .gaussian import quadrature

_HERMITE = 8  # amplitudes, as onnxinit.mehler
_NODE_BLOCK = 1 << 21  # values per matrix product
_CACHE_BLOCK = 1 << 17  # function values per evaluation (the temporaries stay in cache)
_KEEP = 2  # calls whose amplitudes are kept (the correlation follows its moments)

_Z, _W = quadrature(True)
_ROWS = np.empty((_HERMITE + 1, _Z.size))  # w_i He_n(z_i), n = 0..8
_ROWS[0] = 1.0
_ROWS[1] = _Z
for _n in range(2, _HERMITE + 1):  # He_n = z He_{n-1} - (n - 1) He_{n-2}
    _ROWS[_n] = _Z * _ROWS[_n - 1] - (_n - 1) * _ROWS[_n - 2]
_ROWS *= _W
del _n

_READY = 4  # companions' answers kept until their own call asks

_kept: list[tuple] = []  # (chain keys, mean, var, amplitudes), newest last
_ready: list[tuple] = []  # (chain keys, mean, var, (E, Var, a)) integrated ahead, newest last
_lock = threading.Lock()
_local = threading.local()  # .pending: the companions offered to this thread's next calls


@dataclass(frozen=True)
class Companion:
    """A chain to integrate along with the call whose chain keys are ``main`` (one pass over
    the same node values): ``keys`` and ``fn`` as its own later :func:`smooth_moments` call
    will pass them, ``after(x, f(x))`` equal to ``fn(x)`` bit for bit given the main
    chain's values (``x * Sigmoid(x)`` from ``x`` and ``Sigmoid(x)``)."""

    main: tuple
    keys: tuple
    fn: Callable
    after: Callable


@contextmanager
def sharing(companions: Iterable[Companion]):
    """Offer ``companions`` to the :func:`smooth_moments` calls of this thread within the
    block (each to the first call with its ``main`` keys); none outlives the block."""
    _local.pending = list(companions)
    try:
        yield
    finally:
        _local.pending = []


def moments_and_amplitudes(fn: Callable, mean: np.ndarray, var: np.ndarray):
    """``(E[f], Var[f], a)`` for ``z ~ N(mean, var)`` per cell (arrays of one shape, already
    laid out at the tensor's rank), ``a`` ``[8, *shape]``, by the 96-node Gauss-Hermite rule:
    with ``y_i = f(mean + std z_i) - f(mean)`` (shifted against cancellation),
    ``E[f] = f(mean) + sum_i w_i y_i / sum_i w_i``, ``Var[f] = sum_i w_i y_i^2 / sum_i w_i -
    (E[f] - f(mean))^2`` and ``a_n = sum_i w_i He_n(z_i) (f_i - sum_j w_j f_j)``, as
    :func:`.gaussian.gaussian_moments` and :func:`onnxinit.mehler.hermite_amplitudes` compute
    them. None where ``f`` is not finite at some node or returns another shape, or there are
    no cells (the callers' own rules handle those cases)."""
    return _integrate(fn, mean, var, ())[0]


def _integrate(fn, mean, var, companions):
    """(:func:`moments_and_amplitudes` of ``fn``, [its answer for each companion's ``fn``, or
    None]): the companions' chains from the same node values in the same pass (each with its
    own shift, sums and blocks, the same operations as its own call), only where every chain
    is evaluated a block of flat cells at a time."""
    shape = mean.shape
    cells = mean.size
    none = [None] * len(companions)
    if cells == 0:
        return None, none
    std = np.sqrt(var)
    with np.errstate(all="ignore"):
        shift = np.asarray(fn(mean[None]), dtype=np.float64)
        if shift.shape != (1,) + shape or not np.isfinite(shift).all():
            return None, none
        shift = shift.reshape(1, cells)
        sums = np.zeros((_HERMITE + 1, cells))  # sum_i w_i He_n(z_i) y_i, n = 0..8
        squares = np.zeros(cells)  # sum_i w_i y_i^2
        step = max(1, _NODE_BLOCK // cells)
        if broadcasts_nothing(fn, mean.ndim):
            extra = [_companion_state(c, mean) for c in companions]
            done = _cell_block_sums(fn, mean.reshape(-1), std.reshape(-1), shift[0], step,
                                    mean.ndim, (sums, squares), extra)
        else:
            extra = [None] * len(companions)
            done = _node_block_sums(fn, mean, std, shift, step, (sums, squares))
        if not done:
            return None, none
        return (_finish(shift[0], sums, squares, shape),
                [None if e is None or not e[0] else _finish(*e[2:], shape) for e in extra])


def _companion_state(companion, mean):
    """[alive, after, shift, sums, squares] of a companion chain (None: not on flat cells)."""
    if not broadcasts_nothing(companion.fn, mean.ndim):
        return None
    shift = np.asarray(companion.fn(mean[None]), dtype=np.float64)
    if shift.shape != (1,) + mean.shape or not np.isfinite(shift).all():
        return None
    return [True, companion.after, shift.reshape(-1), np.zeros((_HERMITE + 1, mean.size)),
            np.zeros(mean.size)]


def _finish(shift, sums, squares, shape):
    """(E[f], Var[f], a) from the weighted sums (:func:`moments_and_amplitudes`)."""
    total = _W.sum()
    centre = sums[0] / total
    mean_out = shift + centre
    var_out = squares / total - centre**2
    # a_n = sum_i w_i He_n(z_i) (f_i - E) with E = sum_i w_i f_i = shift sum(w) + sums_0:
    # the outer product's rows one at a time, subtracted in place (the same operations
    # as ``sums[1:] - np.outer(...)``, without two [8, cells] temporaries)
    level = sums[0] + shift * (total - 1.0)
    amp = sums[1:]
    for row, factor in zip(amp, _ROWS[1:].sum(axis=1)):
        row -= factor * level
    if not (np.isfinite(mean_out).all() and np.isfinite(var_out).all()
            and np.isfinite(amp).all()):
        return None
    return (mean_out.reshape(shape), np.maximum(var_out, 0.0).reshape(shape),
            amp.reshape((_HERMITE,) + shape))


def _node_block_sums(fn, mean, std, shift, step, out) -> bool:
    """Add ``sum_i w_i He_n(z_i) y_i`` (n = 0..8) and ``sum_i w_i y_i^2`` over the nodes,
    ``y_i = f(mean + std z_i) - shift``, into ``out`` = (sums ``[9, cells]``, squares
    ``[cells]``): one matrix product per block of ``step`` nodes (f evaluated a few nodes at a
    time on ``[nodes, *shape]`` arrays, so that its per-channel constants broadcast). False
    where f returns another shape."""
    sums, squares = out
    cells = mean.size
    sub = max(1, _CACHE_BLOCK // cells)
    pad = (-1,) + (1,) * mean.ndim
    for i in range(0, _Z.size, step):
        count = min(step, _Z.size - i)
        values = np.empty((count, cells))
        for j in range(0, count, sub):
            z = _Z[i + j:i + min(j + sub, count)].reshape(pad)
            x = std * z
            x += mean
            y = np.asarray(fn(x), dtype=np.float64)
            if y.shape != x.shape:
                return False
            np.subtract(y.reshape(z.size, cells), shift, out=values[j:j + z.size])
        sums += _ROWS[:, i:i + count] @ values
        values *= values
        squares += _W[i:i + count] @ values
    return True


def _cell_block_sums(fn, mean, std, shift, step, ndim, out, companions=()) -> bool:
    """:func:`_node_block_sums` for flat cells (``mean``, ``std``, ``shift`` ``[cells]``) and
    a function without per-axis constants, a block of cells at a time: each block's
    ``[step, width]`` values stay in cache through the evaluation and both products. Each
    cell's sums are the same operations in the same order (a product's column is its cell's
    sum over the block's nodes, the blocks of nodes as there; the blocks of cells:
    :func:`.gaussian.column_blocks`). Each live companion state (:func:`_companion_state`)
    adds its chain's sums from the same node values ``x`` and ``f(x)`` (``after(x, f(x))``,
    in a buffer of its own), before ``f``'s shifted values overwrite ``x``; one of another
    shape is dropped."""
    sums, squares = out
    nodes = min(step, _Z.size)
    counts = {min(step, _Z.size - i) for i in range(0, _Z.size, step)}
    least = small_gemm_width(_ROWS.shape[0], counts, mean.size)
    blocks = column_blocks(mean.size, _CACHE_BLOCK // nodes, least)
    buffer = np.empty(nodes * max(b.stop - b.start for b in blocks))
    live = [c for c in companions if c is not None]
    spare = [np.empty(buffer.size) for _ in live]
    ones = (1,) * (ndim - 1)
    for cols in blocks:
        n = cols.stop - cols.start
        for i in range(0, _Z.size, step):
            count = min(step, _Z.size - i)
            values = buffer[:count * n].reshape(count, n)
            np.multiply(std[cols], _Z[i:i + count, None], out=values)
            values += mean[cols]
            x = values.reshape((count,) + ones + (n,))
            raw = fn(x)
            y = np.asarray(raw, dtype=np.float64)
            if y.shape != x.shape:
                return False
            for state, room in zip(live, spare):
                if state[0]:
                    state[0] = _companion_block(state, x, raw, room, cols, i, count)
            _add_block(y, shift, (sums, squares), values, cols, i, count)
    return True


def _add_block(y, shift, out, values, cols, i, count) -> None:
    """Add one block of nodes ``i:i + count`` over cells ``cols`` to the weighted sums ``out``
    (``sums``, ``squares``): ``f - shift`` through ``values`` (``[count, n]``, overwritten)."""
    sums, squares = out
    np.subtract(y.reshape(values.shape), shift[cols], out=values)
    sums[:, cols] += _ROWS[:, i:i + count] @ values
    values *= values
    squares[cols] += _W[i:i + count] @ values


def _companion_block(state, x, raw, room, cols, i, count) -> bool:
    """One block of a companion's sums (as :func:`_cell_block_sums` adds ``f``'s); False
    where its values have another shape."""
    _, after, shift, sums, squares = state
    y = np.asarray(after(x, raw), dtype=np.float64)
    if y.shape != x.shape:
        return False
    n = cols.stop - cols.start
    _add_block(y, shift, (sums, squares), room[:count * n].reshape(count, n), cols, i, count)
    return True


def smooth_moments(chain_keys: tuple, fn: Callable, mean, var):
    """``(E[f], Var[f])`` of :func:`moments_and_amplitudes` (mean and var broadcast to one
    shape), its amplitudes kept for :func:`recall` under ``chain_keys``; None as there. An
    answer a companion (:func:`sharing`) left for these keys and equal cells is taken instead
    of integrating again; the companions offered for these keys are integrated along."""
    shape = np.broadcast_shapes(np.shape(mean), np.shape(var))
    mean = np.array(np.broadcast_to(mean, shape), dtype=np.float64)
    var = np.array(np.broadcast_to(var, shape), dtype=np.float64)
    out = _take_ready(chain_keys, mean, var)
    if out is None:
        pending = getattr(_local, "pending", [])
        mine = [c for c in pending if c.main == chain_keys]
        _local.pending = [c for c in pending if c.main != chain_keys]
        out, ahead = _integrate(fn, mean, var, mine)
        with _lock:
            _ready.extend((c.keys, mean, var, a) for c, a in zip(mine, ahead) if a is not None)
            del _ready[:-_READY]
    if out is None:
        return None
    with _lock:
        _kept.append((chain_keys, mean, var, out[2]))
        del _kept[:-_KEEP]
    return out[0], out[1]


def _same_cells(entry: tuple, chain_keys: tuple, shape, mean, var) -> bool:
    """Whether a kept ``(keys, mean, var, ...)`` entry is for this chain on these cells."""
    keys, m, v = entry[:3]
    return (keys == chain_keys and m.shape == shape and np.array_equal(m, mean)
            and np.array_equal(v, var))


def _take_ready(chain_keys: tuple, mean, var):
    """The answer integrated ahead for this chain on these cells (removed), else None."""
    with _lock:
        for k, entry in enumerate(_ready):
            if _same_cells(entry, chain_keys, mean.shape, mean, var):
                del _ready[k]
                return entry[3]
    return None


def recall(chain_keys: tuple, mean, var) -> np.ndarray | None:
    """The amplitudes ``[8, *shape]`` :func:`smooth_moments` found for this chain on these
    cells (equal keys, equal mean and var arrays), else None."""
    shape = np.broadcast_shapes(np.shape(mean), np.shape(var))
    with _lock:
        kept = list(_kept)
    for entry in reversed(kept):
        if _same_cells(entry, chain_keys, shape, mean, var):
            return entry[3]
    return None
