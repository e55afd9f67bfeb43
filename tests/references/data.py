"""Learnable synthetic data for the twins: Gaussian inputs (or uniform token ids) labelled by a
fixed teacher, so the loss after a training step (GradInit) and the agreement of sub-batch
gradients (NIO) carry signal; random labels would leave nothing to fit. Files in the ``--data``
format (one array per graph input, plus ``labels``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import numpy_helper

TEACHER_SEED = 1234


def _shape_and_classes(model):
    (value,) = model.graph.input[:1]
    dims = [d.dim_value for d in value.type.tensor_type.shape.dim][1:]
    classes = model.graph.output[0].type.tensor_type.shape.dim[-1].dim_value
    return value.name, dims, value.type.tensor_type.elem_type, classes


def teacher_arrays(twin, samples: int, seed: int) -> dict[str, np.ndarray]:
    name, dims, elem_type, classes = _shape_and_classes(twin.model)
    rng = np.random.default_rng(seed)
    if elem_type == 7:  # int64 token ids: the label is a function of the first and last tokens
        vocab = next(numpy_helper.to_array(i).shape[0] for i in twin.model.graph.initializer
                     if i.name == "tok")
        x = rng.integers(0, vocab, size=(samples, *dims)).astype(np.int64)
        return {name: x, "labels": (x[:, 0] + x[:, -1]) % classes}
    x = rng.standard_normal((samples, *dims)).astype(np.float32)
    teacher = np.random.default_rng(TEACHER_SEED).standard_normal((int(np.prod(dims)), classes))
    return {name: x, "labels": np.argmax(x.reshape(samples, -1) @ teacher, axis=1)}


def write_teacher_data(twin, path: Path, samples: int, seed: int) -> Path:
    np.savez(path, **teacher_arrays(twin, samples, seed))
    return path
