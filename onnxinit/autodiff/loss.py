"""Loss heads: ONNX nodes appended after a model output that reduce it to a scalar loss. The
reverse sweep differentiates them like any other node."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto, helper

from ..errors import InvalidOptionError
from ..passes import GraphEmitter


@dataclass(frozen=True)
class AttachedLoss:
    loss: str  # name of the scalar loss tensor
    target: helper.ValueInfoProto | None  # the extra graph input (labels or targets), if any


@dataclass(frozen=True)
class CrossEntropy:
    """Softmax cross-entropy of the logits in ``output`` against integer class labels, averaged
    over the batch and every other non-class axis (sequence positions, pixels). ``axis`` is the
    class axis; by default the last one, or the one the label shape leaves out."""

    output: str | None = None
    axis: int | None = None
    target_name: str = "labels"

    def class_axis(self, logits_shape, label_shape) -> int:
        rank = len(logits_shape)
        if self.axis is not None:
            return self.axis % rank
        if label_shape is None:
            return rank - 1
        for axis in [rank - 1, *range(rank - 1)]:
            if tuple(logits_shape[:axis]) + tuple(logits_shape[axis + 1:]) == tuple(label_shape):
                return axis
        raise InvalidOptionError(
            f"labels of shape {tuple(label_shape)} do not fit logits of shape "
            f"{tuple(logits_shape)} (one axis, the class axis, must be left out)"
        )

    def attach(self, emitter: GraphEmitter, logits, logits_shape, elem_type, label_shape):
        axis = self.class_axis(logits_shape, label_shape)
        classes = logits_shape[axis]
        label_dims = list(logits_shape[:axis]) + list(logits_shape[axis + 1:])
        labels = emitter.reserve(self.target_name)
        log_probs = emitter.node("LogSoftmax", [logits], axis=axis)
        class_ids = np.arange(classes, dtype=np.int64).reshape(
            [classes] + [1] * (len(logits_shape) - 1 - axis))
        wanted = emitter.node("Unsqueeze", [labels, emitter.int64s([axis])])
        one_hot = emitter.node("Cast", [emitter.node("Equal", [wanted, emitter.constant(
            class_ids, np.int64, "class_ids")])], to=elem_type)
        picked = emitter.node("ReduceSum", [emitter.node("Mul", [one_hot, log_probs]),
                                            emitter.int64s([axis])], keepdims=0)
        loss = emitter.node("Neg", [emitter.node("ReduceMean", [picked], keepdims=0)])
        target = helper.make_tensor_value_info(labels, TensorProto.INT64, label_dims)
        return AttachedLoss(loss, target)


@dataclass(frozen=True)
class MeanSquaredError:
    """Mean over all elements of (output - targets)^2."""

    output: str | None = None
    target_name: str = "targets"

    def attach(self, emitter: GraphEmitter, prediction, shape, elem_type, label_shape):
        targets = emitter.reserve(self.target_name)
        diff = emitter.node("Sub", [prediction, targets])
        loss = emitter.node("ReduceMean", [emitter.node("Mul", [diff, diff])], keepdims=0)
        return AttachedLoss(loss, helper.make_tensor_value_info(targets, elem_type, list(shape)))


@dataclass(frozen=True)
class ScalarOutput:
    """An output of the model that already is the scalar loss."""

    output: str | None = None

    def attach(self, emitter: GraphEmitter, value, shape, elem_type, label_shape):
        if int(np.prod(shape)) != 1:
            raise InvalidOptionError(
                f"output {value!r} has shape {tuple(shape)}; loss='output' needs a scalar output"
            )
        return AttachedLoss(emitter.node("ReduceSum", [value], keepdims=0), None)


LOSSES = {"cross_entropy": CrossEntropy, "mse": MeanSquaredError, "output": ScalarOutput}


def loss_head(loss, output: str | None):
    """A loss head from a name ('cross_entropy', 'mse', 'output') or a head object."""
    if not isinstance(loss, str):
        return loss
    if loss not in LOSSES:
        raise InvalidOptionError(f"loss must be one of {', '.join(LOSSES)}, not {loss!r}")
    return LOSSES[loss](output=output)
