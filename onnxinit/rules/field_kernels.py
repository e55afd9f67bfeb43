"""The kernel through which a Conv carries the cross-channel field (:mod:`onnxinit.cross_channel`):
its sparse non-zeros, or, for a dense kernel, every entry, where the field's transfer fits the
budget.

The field was first carried by sparse kernels only: over random dense weights a conv's cross
terms ``w_jc w_jc' Cov(x_c(p), x_c'(p + d))`` have mean zero, so a channel-pooled variance
does not need them. A single channel's does: after a dense convolution of few input channels
(a stem of 3 colour channels to 16) every pair of its output channels is correlated at every
offset the kernel spans, and the next 1x1 convolution's output channel j has the correlation
``rho_j(d) = sum_{c,c'} w_jc w_jc' sqrt(nu_c nu_c') R[c, c', d] / Var_j``, whose cross terms
are as large as its diagonal ones (MobileViT's first expansion: 0.12 rms over its channels at
offset 1). Where each channel is read on its own, so is this error: a depthwise convolution
after it (its variance ``sum_{t,t'} k_t k_t' nu_j rho_j(t' - t)``) and a BatchNorm whose
``gamma`` weights its channels (Hugging Face's MobileViT, EfficientNet and MobileNet draw
``gamma`` and the convolutions from N(0, 0.02), so the maps stay far below ``eps`` and
BatchNorm passes ``gamma_c^2 v_c / eps`` on, channel by channel: 0.93x at MobileViT's first
block, compounding to 0.85x). With the dense kernel's field the transfer is exact under the
field's own assumptions (stationary positions, Gaussian chains by Mehler's formula per pair of
channels).

Where the field meets what other rules hold, the rule's own result stands: a dense kernel
starts no field from an input whose channels' covariance the rule already read
(``channel_covariance``: the field from independent channels would undo it), keeps the rule's
variance where it starts one (which may hold a pooled energy's covariance, ``pooled_energy``),
and reads the variance alone where the input's correlation holds non-Gaussian pair terms
(``pool_pairs``, ``Correlation.energy_pairs``), which the field's Gaussian pairs would replace.

A dense kernel starts no anchor (``cross_channel.Anchor``: a residual branch's correlation with
the block's input, which sparse kernels carry): the skip and the branch of a block of dense
convolutions stay independent operands, as before. Tried: with anchors, a batch-1 residual
block's pool (``tests/rules/test_batch_one.py``, 2.3-2.6x high for a reason not modelled)
spread to 2.0-3.6x; MobileViT unchanged either way.

Cost: a dense kernel has ``C_in/g prod(k)`` non-zeros per output channel, and the transfer
``C_in C_out nnz`` multiply-adds per offset reached, so the budget
(``cross_channel.affordable``, ``FIELD_BUDGET``) and the size of the field it starts
(``DENSE_FIELD_BUDGET``) keep it to the narrow layers of a network's first stages (MobileViT: its
stem and first blocks); a wider conv drops the field as before. A network narrow throughout (a
CIFAR ResNet of 16-64 channels) would carry it through every conv, and every element-wise node
after them through Mehler's formula per pair of channels: the pre-activation ResNet-164's
analysis went 1.1 -> 2.4-3.7 s of CPU for 21 dense fields (predictions moved under 1%). So only
the first ``DENSE_CONVS`` dense Convs of the graph (topological order: the stem and the first
blocks, where a stem of few colour channels makes the field) carry it (:func:`dense_convs`).
"""

from __future__ import annotations

import weakref

import numpy as np

from .. import cross_channel
from ..spatial import gather_taps

# elements of the field (C_out^2 offsets) a dense kernel may start: every op after it works on
# all of them (a dense field has no zero pairs); MobileNetV2's expansions (1.6e6-3.5e6 each)
# took its analysis from 0.9 to 4.7 CPU s
DENSE_FIELD_BUDGET = 1e6
# multiply-adds of a one-group dense kernel's transfer (C_in C_out nnz offsets reached): the
# 3x3 convs of a 16-channel stage (1.1e7 each, 19 in ResNet-20) took its analysis from 0.15 to
# 1.25 CPU s and changed no prediction's side of 10%; a stem (4e5) and a 16 -> 64 expansion
# (2.8e6) fit. A grouped kernel (depthwise: nnz = its taps) keeps FIELD_BUDGET
DENSE_TRANSFER_BUDGET = 4e6
# pairs of non-zeros over the output channels (C_out nnz^2) up to which a Conv that cannot
# carry its input's field on still reads it for its output variance (per position class):
# MobileViT's first 1x1 reduction (64 -> 32) 1.3e5; ResNet-20's padded 3x3 convs of 16
# channels (3.3e5 each, over 9-25 classes) cost 0.07 s apiece and moved no prediction's side
# of 10%
VARIANCE_BUDGET = 2e5
DENSE_CONVS = 4  # dense Convs, the graph's first, that may carry a field (module docstring)
_DENSE_CONVS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def dense_convs(graph) -> frozenset[str]:
    """The first ``DENSE_CONVS`` Convs of ``graph`` (its root: every view of one model) with a
    constant dense kernel, in topological order: those that may carry a dense field."""
    root = getattr(graph, "root", graph)
    found = _DENSE_CONVS.get(root)
    if found is None:
        chosen = []
        for node_id in root.order:
            node = root.node(node_id)
            if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
                continue
            w = root.value(node.input[1]) if root.is_constant(node.input[1]) else None
            groups = next((a.i for a in node.attribute if a.name == "group"), 1)
            if w is None or np.ndim(w) < 3 or cross_channel.sparse_kernel(
                    np.asarray(w, np.float64), groups) is not None:
                continue
            chosen.append(node_id)
            if len(chosen) == DENSE_CONVS:
                break
        found = _DENSE_CONVS[root] = frozenset(chosen)
    return found


def dense_kernel(w: np.ndarray, groups: int) -> cross_channel.SparseKernel:
    """Every entry of a kernel ``[C_out, C_in/g, k...]`` as a non-zero."""
    c_out, per_group = w.shape[:2]
    taps = int(np.prod(w.shape[2:]))
    n = per_group * taps
    order = np.broadcast_to(np.arange(n), (c_out, n))
    group = np.arange(c_out)[:, None] // (c_out // groups)
    channel = group * per_group + order // taps
    tap = np.stack(np.unravel_index(order % taps, w.shape[2:]), axis=-1)
    return cross_channel.SparseKernel(channel, tap, w.reshape(c_out, -1))


def dense_covariance(field: np.ndarray, nu: np.ndarray, w: np.ndarray, strides, dilations,
                     out_radius) -> np.ndarray:
    """``cross_channel.conv_covariance`` for a dense kernel ``w`` ``[C_out, C_in, k...]`` (one
    group) by matrix products per tap instead of a gather per non-zero (the same two passes,
    the same float32 products)::

        Z[c, j', e] = sum_{c', t'} w_j'c't' sqrt(nu_c') R[c, c', e + dil t']
        Cov[j, j', d] = sum_{c, t} w_jct sqrt(nu_c) Z[c, j', s d - dil t]
    """
    c_out, c_in = w.shape[:2]
    kernel = w.shape[2:]
    n = len(out_radius)
    span = [(k - 1) * d for k, d in zip(kernel, dilations)]
    reach = [s * r + sp for s, r, sp in zip(strides, out_radius, span)]
    padded = cross_channel.cropped(field, [r + sp for r, sp in zip(reach, span)]).astype(
        np.float32)
    scaled = (w * np.sqrt(nu).reshape((1, -1) + (1,) * n)).astype(np.float32)
    z = np.zeros((c_in, *(2 * r + 1 for r in reach), c_out), dtype=np.float32)
    for tap in np.ndindex(*kernel):
        window = (slice(None), slice(None)) + tuple(
            slice(d * t + sp, d * t + sp + 2 * r + 1)
            for d, t, sp, r in zip(dilations, tap, span, reach))
        z += np.tensordot(padded[window], scaled[(slice(None), slice(None)) + tap].T,
                          axes=([1], [0]))  # [c, e..., j']
    cov = np.zeros((c_out, *(2 * r + 1 for r in out_radius), c_out))
    for tap in np.ndindex(*kernel):
        window = (slice(None),) + tuple(
            slice(r - s * q - d * t, r + s * q - d * t + 1, s)
            for r, s, q, d, t in zip(reach, strides, out_radius, dilations, tap))
        cov += np.tensordot(scaled[(slice(None), slice(None)) + tap], z[window], axes=([1], [0]))
    return np.moveaxis(cov, -1, 1)


def field_kernel(w: np.ndarray, groups: int, strides, dilations,
                 out_radius, dense_allowed: bool = True
                 ) -> tuple[cross_channel.SparseKernel | None, bool]:
    """(kernel, dense): ``w``'s sparse kernel (``cross_channel.sparse_kernel``), else the
    dense one when ``dense_allowed`` (:func:`dense_convs`) and its transfer's ``C_in C_out
    nnz`` multiply-adds per offset reached fit ``FIELD_BUDGET`` and its output field
    ``DENSE_FIELD_BUDGET`` (checked before the kernel is built), else None."""
    kern = cross_channel.sparse_kernel(w, groups)
    if kern is not None:
        return kern, False
    if not dense_allowed:
        return None, True
    c_out, per_group = w.shape[:2]
    nnz = per_group * int(np.prod(w.shape[2:]))
    span = [(k - 1) * d for k, d in zip(w.shape[2:], dilations)]
    reach = int(np.prod([2 * (s * r + sp) + 1 for s, r, sp in zip(strides, out_radius, span)]))
    offsets = int(np.prod([2 * r + 1 for r in out_radius]))
    budget = DENSE_TRANSFER_BUDGET if groups == 1 else cross_channel.FIELD_BUDGET
    if per_group * groups * c_out * reach * nnz > budget \
            or c_out * c_out * offsets > DENSE_FIELD_BUDGET:
        return None, True
    return dense_kernel(w, groups), True


def field_variance(held, w: np.ndarray, groups: int, nu_cells: np.ndarray, taps, dilations,
                   var: np.ndarray, kern: cross_channel.SparseKernel | None = None) -> np.ndarray:
    """The output variance per channel and position class from the input's field ``held``
    (``cross_channel.class_variance``: the cross terms at each pair of taps' offset) where
    the Conv cannot carry the field on (over its budget) but its ``C_out nnz^2`` pairs fit
    ``VARIANCE_BUDGET``: MobileViT's 1x1 reduction after a depthwise conv, whose
    output channels read their inputs' covariance (0.17 rms off the diagonal). ``var``
    (channels independent) otherwise; the output carries no field either way. ``kern``:
    ``w``'s kernel where built already."""
    c_out, per_group = w.shape[:2]
    nnz = per_group * int(np.prod(w.shape[2:])) if kern is None else kern.weight.shape[1]
    if held is None or held.corr.shape[0] != per_group * groups \
            or c_out * nnz * nnz > VARIANCE_BUDGET:
        return var
    kern = kern if kern is not None else (cross_channel.sparse_kernel(w, groups)
                                          or dense_kernel(w, groups))
    sd_taps = gather_taps(np.sqrt(nu_cells), taps)
    return cross_channel.class_variance(held.corr, sd_taps, kern, dilations)


__all__ = ["dense_convs", "dense_kernel", "field_kernel", "field_variance"]
