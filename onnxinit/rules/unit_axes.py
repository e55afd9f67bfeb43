"""A Squeeze, Unsqueeze or Reshape that only removes or inserts size-1 axes after the batch and
channel axes moves no position: the feature map's position classes and spatial correlation
(:class:`.moments.Spatial`) are kept as they are, the unit axes dropped or added with one class
and offset 0 alone.

tf2onnx writes Keras' 1-D layers on 2-D ops: a Conv1D or SeparableConv1D is a Conv on
``[N, C, 1, T]`` followed by a Squeeze to ``[N, C, T]``, its activation runs there, and an
AveragePooling1D or MaxPooling1D Unsqueezes back to ``[N, C, 1, T]`` for a 2-D pool. The
general reshape rule drops the spatial correlation (a reshape may move positions) and the pool
then averages adjacent positions as independent, where a kernel of k taps makes neighbours
share k - 1 of them: an AveragePooling1D(2) after a SeparableConv1D of kernel 5 and a ReLU read
0.87x of onnxruntime's variance.

Any other reshape of a map expands its classes to per-position statistics (:func:`per_position`,
the reshape rule's), each position keeping its class's law (source Gaussian and chain).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..correlation import Correlation
from ..moments import Moments, Source
from ..spatial import DENSE_CAP, attach, dense


def _placement(in_shape: Sequence[int], out_shape: Sequence[int]) -> list[int | None] | None:
    """For each spatial axis of the output (axis 2 on), the input's spatial axis it is, None for
    an inserted unit axis; None when the op does more than remove or insert unit axes there."""
    if len(in_shape) < 3 or len(out_shape) < 3 or tuple(in_shape[:2]) != tuple(out_shape[:2]):
        return None
    kept_in = [i for i, s in enumerate(in_shape[2:]) if s != 1]
    kept_out = [j for j, s in enumerate(out_shape[2:]) if s != 1]
    if [in_shape[2 + i] for i in kept_in] != [out_shape[2 + j] for j in kept_out]:
        return None
    placed: list[int | None] = [None] * (len(out_shape) - 2)
    for i, j in zip(kept_in, kept_out):
        placed[j] = i
    return placed


def _moved(a, lead: int, rank: int, placed: list[int | None]) -> np.ndarray:
    """``a`` (``lead`` extra leading axes, then ``[1, C or 1, classes...]`` of ``rank`` axes,
    broadcastable) with its spatial axes in the output's order, unit axes of size 1."""
    a = np.asarray(a)
    a = a.reshape((1,) * (rank + lead - a.ndim) + a.shape)
    head = a.shape[:lead + 2]
    sizes = [1 if i is None else a.shape[lead + 2 + i] for i in placed]
    return a.reshape(head + tuple(sizes))


def _cells(cells: Moments, rank: int, placed: list[int | None]) -> Moments:
    src = cells.source
    if src is not None:
        src = Source(_moved(src.mean, 0, rank, placed), _moved(src.var, 0, rank, placed),
                     src.chain)
    mixture = None
    if cells.mixture is not None:
        mixture = tuple(_moved(a, 1, rank, placed) for a in cells.mixture)
    return Moments(_moved(cells.mean, 0, rank, placed), _moved(cells.var, 0, rank, placed),
                   src, mixture)


def _corr(corr: Correlation | None, rank: int, placed: list[int | None]) -> Correlation | None:
    """The correlation by offset with the unit axes' offset 0 alone; the cross-channel field
    (rarely carried this far) is left out."""
    if corr is None:
        return None
    # rho is [C or 1, offsets...]: laid out as the cells without their batch axis
    move = lambda rho: _moved(rho[None], 0, rank, placed)[0]  # noqa: E731
    gauss = None if corr.gauss is None else (move(corr.gauss[0]), corr.gauss[1])
    return Correlation(move(corr.rho), corr.floor, gauss, corr.centred, None, corr.normalized,
                       corr.energy_pairs)


def unit_axes_moved(x: Moments, in_shape: Sequence[int], out_shape: Sequence[int]) -> Moments | None:
    """``x`` (a feature map with position classes) as the output of a layout op of
    ``in_shape -> out_shape`` that only removes or inserts unit spatial axes (module
    docstring); None for any other layout op or a tensor without position classes."""
    sp = x.spatial
    placed = _placement(in_shape, out_shape)
    if sp is None or placed is None or len(sp.maps) != len(in_shape) - 2:
        return None
    if any(len(m) != 1 for i, m in enumerate(sp.maps) if in_shape[2 + i] == 1):
        return None
    maps = [np.zeros(1, np.int64) if i is None else sp.maps[i] for i in placed]
    cells = _cells(sp.cells, len(in_shape), placed)
    return attach(cells, maps, _corr(sp.corr, len(in_shape), placed))


def per_position(x: Moments, shape) -> Moments:
    """x's position classes expanded to per-position statistics (a Flatten of a small map
    gives each feature its position's statistics), or its per-channel totals when the map is
    too large to expand. Each position keeps its class's source Gaussian and chain: a ReLU's
    law survives a layout op that expands the classes (tf2onnx's MaxPooling1D after a squeezed
    Conv1D and its ReLU: Unsqueeze, Reshape to ``[N, C, T, 1]``; without the law the pool took
    a Gaussian, 0.53x)."""
    if int(np.prod(shape[1:])) > DENSE_CAP:
        return Moments(x.mean, x.var, x.source)
    sp = x.spatial
    mean, var = dense(sp)
    src = sp.cells.source
    if src is None:
        return Moments(mean, var)
    rank = sp.cells.mean.ndim
    cells = np.broadcast_shapes(sp.cells.mean.shape, sp.cells.var.shape)
    try:
        arrays = [np.broadcast_to(np.reshape(a, (1,) * (rank - np.ndim(a)) + np.shape(a)), cells)
                  for a in (src.mean, src.var)]
    except ValueError:
        return Moments(mean, var)
    index = [slice(None)] * (rank - len(sp.maps))  # spatial.dense's indexing
    for i, m in enumerate(sp.maps):
        index.append(np.reshape(m, [m.size if j == i else 1 for j in range(len(sp.maps))]))
    index = tuple(index)
    return Moments(mean, var, Source(arrays[0][index], arrays[1][index], src.chain))


__all__ = ["per_position", "unit_axes_moved"]
