"""Read-only views of arrays, without numpy's per-call overhead where nothing is broadcast.

``np.broadcast_to`` builds an ``nditer`` on every call: 3-4 us, even when the array already
has the target shape. The rules ask for per-channel vectors and per-class grids that way
thousands of times a propagation (ResNet-164: 8,576 calls, 8,563 of them to the array's own
shape), so :func:`broadcast_to` makes numpy's view itself when the shapes are equal: the same
data, read-only, the array's strides except that an axis of length 1 gets the stride 0, as
numpy gives it (indexing it with 0 and inserting a new axis there; ``tests/test_views.py``
compares shapes, strides, flags and data with numpy's on random arrays). Likewise
:func:`broadcast_arrays` of arrays that already share a shape.
"""

from __future__ import annotations

import numpy as np

_ALL = slice(None)


def broadcast_to(array, shape: tuple[int, ...]) -> np.ndarray:
    """``np.broadcast_to(array, shape)``: the same values, read-only, with the same strides."""
    if type(array) is not np.ndarray or array.shape != shape or 0 in shape:
        return np.broadcast_to(array, shape)
    if 1 in shape:  # numpy's stride 0 on each axis of length 1
        index = []
        for n in shape:
            if n == 1:
                index += (0, None)
            else:
                index.append(_ALL)
        view = array[tuple(index)]
    else:
        view = array.view()
    view.flags.writeable = False
    return view


def broadcast_arrays(*arrays) -> tuple:
    """``np.broadcast_arrays(*arrays)``: numpy returns ndarrays of one shape as they are (the
    same objects), which this does without its shape computation."""
    first = arrays[0] if arrays else None
    if type(first) is np.ndarray and all(type(a) is np.ndarray and a.shape == first.shape
                                         for a in arrays):
        return arrays
    return np.broadcast_arrays(*arrays)


__all__ = ["broadcast_arrays", "broadcast_to"]
