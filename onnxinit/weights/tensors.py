"""The float initializers of an ONNX model, and the names that alias them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx

from .._loading import read_model
from ..initializers import tensor_array
from ..writeback import WRITABLE_TYPES


def float_initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every float initializer of the main graph (float32/64/16, bfloat16), in model order,
    with its own dtype (bfloat16 as ``ml_dtypes.bfloat16``); external data read by
    :func:`~onnxinit._loading.read_model` is memory-mapped, not copied."""
    return {tensor.name: tensor_array(tensor) for tensor in model.graph.initializer
            if tensor.data_type in WRITABLE_TYPES}


def identity_aliases(model: onnx.ModelProto) -> dict[str, str]:
    """Alias -> float initializer, for outputs of ``Identity`` nodes of an initializer (or of
    another alias). PyTorch's exporter deduplicates equal initializers this way: a zero bias
    shared by many layers is one initializer read through ``Identity`` nodes named after each
    layer's parameter."""
    names = {t.name for t in model.graph.initializer if t.data_type in WRITABLE_TYPES}
    aliases: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type == "Identity" and node.domain in ("", "ai.onnx") and node.input:
            source = node.input[0]
            root = aliases.get(source, source if source in names else None)
            if root is not None and node.output and node.output[0] not in names:
                aliases[node.output[0]] = root
    return aliases


def load_model(model: str | os.PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, Path | None]:
    if isinstance(model, onnx.ModelProto):
        return model, None
    return read_model(model)[0], Path(model)

