"""PyTorch adapter: load rescaled ONNX weights into an ``nn.Module`` in place."""

from __future__ import annotations

import os

import numpy as np

from ..weights import MappingReport
from . import as_float, plan_values


def _numpy(tensor) -> np.ndarray:
    import torch

    tensor = tensor.detach().cpu()
    if tensor.dtype in (torch.bfloat16,):
        tensor = tensor.float()
    return tensor.numpy()


def module_parameters(module) -> tuple[dict, dict[str, np.ndarray], set[str]]:
    """(name -> tensor, name -> current values, buffer names): every parameter (tied ones once,
    as ``named_parameters`` gives them) and every floating-point buffer."""
    tensors, values, buffers = {}, {}, set()
    for name, param in module.named_parameters():
        tensors[name], values[name] = param, _numpy(param)
    for name, buffer in module.named_buffers():
        if buffer.is_floating_point() and name not in tensors:
            tensors[name], values[name] = buffer, _numpy(buffer)
            buffers.add(name)
    return tensors, values, buffers


def load_into(
    module,
    rescaled_onnx_or_weights: str | os.PathLike | object,
    original_onnx: str | os.PathLike | object | None = None,
    *,
    strict: bool = False,
) -> MappingReport:
    """Copy the rescaled values into ``module``'s parameters (and buffers that were
    initializers) in place; return the :class:`MappingReport`.

    ``rescaled_onnx_or_weights``: the rescaled ONNX model (path or ModelProto), a weights file
    from ``onnxinit export-weights``, or a dict name -> array. ``original_onnx``: the model the
    module was exported as; when given, values are matched against it (needed for tensors the
    exporter renamed, e.g. ``onnx::MatMul_123``, when the rescaled file carries no scales).
    Raises :class:`onnxinit.weights.MappingError` (with ``.report``) and leaves the module
    unchanged when it does not match; ``strict`` also refuses unmapped tensors and missing
    parameters."""
    import torch

    tensors, values, buffers = module_parameters(module)
    new, report = plan_values(values, buffers, rescaled_onnx_or_weights, original_onnx, strict)
    with torch.no_grad():
        for name, value in new.items():
            target = tensors[name]
            target.copy_(torch.from_numpy(as_float(value).copy()).to(target.dtype))
    return report
