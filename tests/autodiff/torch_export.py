"""Exporting torch modules in training mode (legacy exporter: it keeps BatchNormalization with
training_mode=1) and reading the reference gradients from torch autograd."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx


def export_training(module, args, input_names, opset: int) -> onnx.ModelProto:
    import torch

    buffer = io.BytesIO()
    module.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buffer, dynamo=False, opset_version=opset,
                          training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False,
                          input_names=input_names)
    return onnx.load_from_string(buffer.getvalue())


def torch_gradients(module, args, labels, class_axis=1):
    """(loss, {parameter name: gradient}) of the mean cross-entropy in training mode."""
    import torch

    module.train()
    module.zero_grad()
    logits = module(*args)
    if class_axis != 1:
        logits = logits.movedim(class_axis, 1)
    loss = torch.nn.functional.cross_entropy(logits, torch.as_tensor(labels))
    loss.backward()
    return float(loss.detach()), {name: p.grad.detach().numpy().copy()
                         for name, p in module.named_parameters() if p.grad is not None}


def assert_gradients_close(ours: dict, reference: dict, rtol: float) -> None:
    """Every reference gradient is matched within ``rtol`` relative to its norm; tensors whose
    exact gradient vanishes (a conv bias before BatchNormalization: torch's is rounding noise)
    are measured against 1e-3 of the norm of the whole gradient instead."""
    missing = set(reference) - set(ours)
    assert not missing, f"no gradient for {sorted(missing)}"
    total = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in reference.values()))
    for name, expected in reference.items():
        error = np.linalg.norm(ours[name] - expected)
        scale = max(np.linalg.norm(expected), 1e-3 * total)
        assert error <= rtol * scale, f"{name}: relative error {error / scale:.2e}"
