"""The covariance across the last axis (a recurrent layer's units, a channels-last map's
channels) of a Loop's or Scan's output, measured where the empirical fallback runs the node.

The fallback (:mod:`.empirical`) measures a Loop's outputs element by element; the units of one
sample's state read the same input through the same weights, so they are correlated, and a
dense layer after them sums ``w^T S w``, not ``sum_j w_j^2 Var h_j`` (Keras 3's GRU and
SimpleRNN classifiers' Dense read 1.11-1.17x with the units taken as independent). The
fallback has the values: the field is their covariance across the last axis,

    S[u, v] = mean over the samples and the other indices of c_u c_v,
    c = h - E[h | every index but the batch's and the runs']

(within each position and step, as :mod:`.channel_covariance` keeps its fields: the spread of
the means over positions or steps is not in it), pooled over the steps of a scan output. A
Slice or Gather of one step of a scan output (tf2onnx's last state, a TimeDistributed Dense
written per step) takes that step's own ``S`` (pooled over the steps nearest it until there
are 16 samples per unit): the units' correlation changes along the steps, from a state that
starts at zero (Keras 3's masked LSTM over 16 steps: its head, the pooled ``S`` rescaled to
the last step's measured variances, read 1.11x and 1.43x on its two outputs). Kept for the
moments object the fallback returned: a node measured again with other moments measures it
again.
"""

from __future__ import annotations

import weakref

import numpy as np

from ..moments import Moments
from .covariance_layout import Field, sliced

MAX_UNITS = 1024  # a last axis wider than this: no field (S would be large; few readers)
_MAX_STEP_ELEMENTS = 1 << 22  # of a scan output's per-step covariances ([T, n, n]), at most
_SAMPLES_PER_UNIT = 16  # samples behind one step's covariance, at least, per unit
_MEASURED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def measured_covariance(values: np.ndarray, batch_axes: tuple[int, ...],
                        step_axis: int | None = None):
    """(``S`` ``[n, n]`` across the last axis of ``values`` (module docstring), centred on the
    mean over ``batch_axes`` (the samples) at every other index; with ``step_axis``, also each
    step's ``[T, n, n]`` (None if larger than _MAX_STEP_ELEMENTS)). None where the last axis is
    wider than MAX_UNITS or there are fewer than 2 samples."""
    n = values.shape[-1]
    samples = int(np.prod([values.shape[a] for a in batch_axes]))
    if n > MAX_UNITS or n < 2 or samples < 2 or any(a == values.ndim - 1 for a in batch_axes):
        return None
    c = values.astype(np.float64)
    c = c - c.mean(axis=batch_axes, keepdims=True)
    if not np.isfinite(c).all():
        return None
    flat = c.reshape(-1, n)
    per_step = None
    if step_axis is not None and values.shape[step_axis] * n * n <= _MAX_STEP_ELEMENTS:
        steps = np.moveaxis(c, step_axis, 0).reshape(values.shape[step_axis], -1, n)
        per_step = _windowed(np.einsum("tsu,tsv->tuv", steps, steps), steps.shape[1], n)
    return flat.T @ flat / flat.shape[0], per_step


def _windowed(sums: np.ndarray, samples: int, n: int) -> np.ndarray:
    """Each step's covariance from the sums of products ``sums`` [T, n, n] over ``samples``
    samples per step, pooled over the steps nearest it until ``_SAMPLES_PER_UNIT * n`` samples
    (a step's own are few: 128 for a Keras 2 GRU's 128 units, whose head read 1.078x on its
    own step's, 1.060x pooled so, over 64 batches)."""
    steps = sums.shape[0]
    width = min(steps, max(1, -(-_SAMPLES_PER_UNIT * n // samples)))
    cumulative = np.concatenate([np.zeros((1, n, n)), np.cumsum(sums, axis=0)])
    starts = np.clip(np.arange(steps) - width // 2, 0, steps - width)
    return (cumulative[starts + width] - cumulative[starts]) / (width * samples)


def scan_output(ctx, name: str) -> bool | None:
    """Whether ``name`` is a scan output of the Loop or Scan of ``ctx`` (its iterations stacked
    along a new axis 0) rather than a carried state; None for another node, or a Scan that
    stacks along another axis."""
    node = ctx.node
    if node.op_type not in ("Loop", "Scan"):
        return None
    carried = len(node.input) - 2
    if node.op_type == "Scan":
        carried = len(node.input) - int(ctx.attr("num_scan_inputs", 0))
        if any(ctx.attr("scan_output_axes", []) or []):
            return None
    return [o for o in node.output if o].index(name) >= carried


def record(graph, tensor: str, m: Moments, measured) -> None:
    """Keep ``measured`` (:func:`measured_covariance`'s) as ``tensor``'s field while its moments
    are ``m``."""
    if measured is not None:
        _MEASURED.setdefault(graph, {})[tensor] = (m, *measured)


def record_output(ctx, name: str, m: Moments, value: np.ndarray, shift: int) -> None:
    """Record the field of output ``name`` of the Loop or Scan of ``ctx``, measured on ``value``
    (its runs first when ``shift``), its moments ``m``: where its batch axis (axis 0 of a
    carried state, 1 of a scan output) has the size of the graph inputs' leading axis."""
    scan = scan_output(ctx, name)
    shape = ctx.graph.shape(name)
    if scan is None or not shape or len(shape) < 2 or value.ndim != len(shape) + shift:
        return
    batch = int(scan)
    batches = {s[0] for s in ctx.graph.input_shapes.values() if s}  # the inputs' leading axes
    if shape[batch] not in batches or value.shape[batch + shift] != shape[batch]:
        return
    samples = (0, batch + 1) if shift else (batch,)
    record(ctx.graph, name, m, measured_covariance(value, samples, shift if scan else None))


def field(graph, known, tensor: str) -> Field | None:
    """The field recorded for ``tensor``, if its moments are still the ones measured."""
    hit = _MEASURED.get(graph, {}).get(tensor)
    shape = graph.shape(tensor)
    if hit is None or known is None or known.get(tensor) is not hit[0] or not shape:
        return None
    return Field(len(shape) - 1, hit[1])


def step_field(graph, known, node, tensor: str) -> Field | None:
    """The field of ``tensor``, one step that ``node`` (a Slice, or a Gather of one index)
    takes from a scan output along its axis 0 with its steps' covariances recorded: that
    step's (module docstring); None otherwise."""
    if node.op_type not in ("Slice", "Gather") or not node.input:
        return None
    source = node.input[0]
    hit = _MEASURED.get(graph, {}).get(source)
    shape, shape_x = graph.shape(tensor), graph.shape(source)
    if (hit is None or hit[2] is None or known is None or known.get(source) is not hit[0]
            or not shape or not shape_x or shape[-1] != shape_x[-1]):
        return None
    if node.op_type == "Gather":
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        index = graph.value(node.input[1]) if len(node.input) > 1 else None
        if axis % len(shape_x) != 0 or index is None or np.ndim(index) != 0:
            return None
        steps = [int(index) % shape_x[0]]
    else:
        if len(shape) != len(shape_x) or shape[1:] != shape_x[1:]:
            return None
        steps = sliced(graph, node, shape_x, 0)
        if steps is None or len(steps) != 1:
            return None
    return Field(len(shape) - 1, hit[2][steps[0]])


__all__ = ["MAX_UNITS", "field", "measured_covariance", "record", "record_output", "scan_output",
           "step_field"]
