"""Geometry shared by convolutions and pools: explicit pads from ``auto_pad``, the pads and
``output_padding`` of the transposed convolution that maps an output gradient back onto the
input, and the record a convolution's weight gradient carries so that differentiating it again
takes its closed form (:class:`WeightGradientGeometry`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import onnx

from ...errors import UnsupportedModelError

WEIGHT_GRADIENT_TAG = "onnxinit:conv-weight-gradient "


@dataclass(frozen=True)
class WeightGradientGeometry:
    """``dW[m, c, k] = sum_{n, p} g[n, m, p] x[n, group(m) c, p s + k d - pad_begin]`` (zero
    outside x): which tensors and which window. Written into the ``doc_string`` of the node that
    outputs dW (onnxruntime ignores it), so that a second derivation recognises the subgraph
    however it was spelled out in primitives."""

    x: str
    g: str
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pad_begin: tuple[int, ...]
    group: int

    def encode(self) -> str:
        return WEIGHT_GRADIENT_TAG + json.dumps(asdict(self))

    @classmethod
    def of(cls, node: onnx.NodeProto) -> WeightGradientGeometry | None:
        """The geometry recorded on ``node``, or None when it carries none."""
        if not node.doc_string.startswith(WEIGHT_GRADIENT_TAG):
            return None
        fields = json.loads(node.doc_string[len(WEIGHT_GRADIENT_TAG):])
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def explicit_pads(
    auto_pad: str,
    pads: Sequence[int] | None,
    in_sizes: Sequence[int],
    out_sizes: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
) -> tuple[list[int], list[int]]:
    """(begin pads, end pads) of a window op, resolving SAME_UPPER/SAME_LOWER/VALID from the
    static input and output sizes."""
    rank = len(in_sizes)
    if auto_pad in ("", "NOTSET"):
        pads = list(pads) if pads else [0] * (2 * rank)
        return pads[:rank], pads[rank:]
    if auto_pad == "VALID":
        return [0] * rank, [0] * rank
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise UnsupportedModelError(f"auto_pad={auto_pad!r} is not an ONNX padding mode")
    begin, end = [], []
    for size, out, k, s, d in zip(in_sizes, out_sizes, kernel, strides, dilations):
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else large)
        end.append(large if auto_pad == "SAME_UPPER" else small)
    return begin, end


def transposed_geometry(
    in_size: int, out_size: int, kernel: int, stride: int, dilation: int, pad_begin: int
) -> tuple[int, int]:
    """(end pad, output_padding) for a transposed window op that maps ``out_size`` positions
    back onto ``in_size`` positions, given the forward op's begin pad.

    The full transposed output spans ``span = stride (out - 1) + dilation (kernel - 1) + 1``
    positions starting at ``-pad_begin``; it is cropped at the end when it overshoots the input
    and extended with ``output_padding`` (which receives no contribution) when it falls short.
    """
    span = stride * (out_size - 1) + dilation * (kernel - 1) + 1
    pad_end = max(span - pad_begin - in_size, 0)
    return pad_end, in_size - (span - pad_begin - pad_end)
