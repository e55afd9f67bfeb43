"""How an ONNX weight tensor is laid out in a framework: the reshape and transpose between them.

ONNX writes a convolution kernel ``[out, in, *k]``; PyTorch holds it that way, Keras and
Flax as ``[*k, in, out]`` (a transposed convolution's ``[in, out, *k]`` as ``[*k, out, in]``,
the same permutation), a depthwise kernel ``[in * m, 1, *k]`` as ``[*k, in, m]``, a dense kernel
``[in, out]`` (ONNX MatMul) or ``[out, in]`` (Gemm with transB). A :class:`Layout` names one of
these and converts both ways; :func:`layouts` lists the ones that fit a pair of shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def squeezed(shape) -> tuple[int, ...]:
    """The shape without its size-1 dimensions."""
    return tuple(int(d) for d in shape if d != 1)


@dataclass(frozen=True)
class Layout:
    """``param = onnx.reshape(shape).transpose(perm)`` (``perm`` None: a plain reshape)."""

    name: str
    shape: tuple[int, ...]
    perm: tuple[int, ...] | None = None

    @property
    def transposed(self) -> bool:
        return self.perm is not None and self.perm != tuple(range(len(self.perm)))

    def to_param(self, onnx_value: np.ndarray) -> np.ndarray:
        value = np.asarray(onnx_value).reshape(self.shape)
        return value if self.perm is None else value.transpose(self.perm)

    def to_onnx(self, param_value: np.ndarray, onnx_shape) -> np.ndarray:
        value = np.asarray(param_value)
        if self.perm is not None:
            value = value.transpose(np.argsort(self.perm))
        return value.reshape(tuple(onnx_shape))


def _spatial_fits(onnx_k: tuple, param_k: tuple) -> bool:
    return int(np.prod(onnx_k)) == int(np.prod(param_k)) and squeezed(onnx_k) == squeezed(param_k)


def layouts(onnx_shape, param_shape) -> list[Layout]:
    """Every layout that turns an ONNX tensor of ``onnx_shape`` into ``param_shape``, most
    likely first: the same shape (up to size-1 dimensions, e.g. a bias written ``[1, C]``);
    a 2-D transpose (Gemm ``transB``); a channels-last kernel (``[O, I, *k]`` ->
    ``[*k', I, O]`` where ``k'`` is ``k`` up to size-1 dimensions, e.g. a Conv1D written as a
    2-D Conv); a channels-last depthwise kernel (``[I*M, 1, *k]`` -> ``[*k', I, M]``)."""
    onnx_shape, param_shape = tuple(int(d) for d in onnx_shape), tuple(int(d) for d in param_shape)
    out = []
    if squeezed(onnx_shape) == squeezed(param_shape):
        out.append(Layout("same", param_shape))
    if len(onnx_shape) == 2 and onnx_shape[::-1] == param_shape:
        out.append(Layout("transposed", onnx_shape, (1, 0)))
    if len(onnx_shape) >= 3 and len(param_shape) >= 3:
        o, i, k = onnx_shape[0], onnx_shape[1], onnx_shape[2:]
        pk, (pi, po) = param_shape[:-2], param_shape[-2:]
        n = len(pk)
        if (pi, po) == (i, o) and _spatial_fits(k, pk):
            layout = Layout("channels-last kernel", (o, i, *pk), (*range(2, n + 2), 1, 0))
            if layout.transposed and layout.to_param(np.zeros(onnx_shape)).shape == param_shape:
                out.append(layout)
        if i == 1 and pi * po == o and _spatial_fits(k, pk):
            out.append(Layout("channels-last depthwise kernel", (pi, po, *pk),
                              (*range(2, n + 2), 0, 1)))
    return out


def layout_named(name: str, onnx_shape, param_shape) -> Layout:
    """The layout called ``name`` for these shapes (as :func:`layouts` found it)."""
    for layout in layouts(onnx_shape, param_shape):
        if layout.name == name:
            return layout
    raise ValueError(f"no {name} layout from {tuple(onnx_shape)} to {tuple(param_shape)}")
