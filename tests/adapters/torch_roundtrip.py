"""Export a torch module, rescale it with autoinit, load the result back, export again."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnxinit.rescale import rescale
from onnxinit.weights import float_initializers

IR_VERSION = 10  # onnxruntime 1.31 reads at most IR 13; keep well below


def export(module, args, path: Path, input_names, *, training=False, fold=True,
           opset=17) -> Path:
    """The legacy exporter (dynamo=False), as the rest of the test suite uses."""
    import torch

    mode = torch.onnx.TrainingMode.TRAINING if training else torch.onnx.TrainingMode.EVAL
    (module.train if training else module.eval)()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset,
                          training=mode, do_constant_folding=fold, input_names=input_names)
    model = onnx.load(str(path))
    model.ir_version = min(model.ir_version, IR_VERSION)
    onnx.save(model, str(path))
    return path


def ort_outputs(path: Path, feeds: dict) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def round_trip(module, args, input_names, folder: Path, *, training=False, fold=True):
    """Export, rescale (autoinit), load_into the same module, export again; check that the new
    export's initializers are the rescaled ones and that the module computes what onnxruntime
    computes on the rescaled model. Returns the mapping report."""
    import torch

    from onnxinit.adapters.torch import load_into

    original = export(module, args, folder / "original.onnx", input_names,
                      training=training, fold=fold)
    rescaled = rescale(original, "autoinit", output=folder / "rescaled.onnx").output
    report = load_into(module, rescaled, original)
    assert report.unmapped == [] and report.folded == [] and report.conflicts == {}

    again = export(module, args, folder / "again.onnx", input_names, training=training,
                   fold=fold)
    before = float_initializers(onnx.load(str(original)))
    expected = float_initializers(onnx.load(str(rescaled)))
    got = float_initializers(onnx.load(str(again)))
    assert list(got) == list(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    assert any(not np.array_equal(before[n], expected[n]) for n in expected)  # it did rescale

    feeds = {name: a.numpy() for name, a in zip(input_names, args)}
    reference = ort_outputs(rescaled, feeds)
    (module.train if training else module.eval)()
    with torch.no_grad():
        output = module(*args)
    np.testing.assert_allclose(output.numpy(), reference, rtol=1e-4, atol=1e-4)
    return report
