"""The oracle of the backward rules: the gradient statistics the project's autodiff measures
(onnxruntime, seeded batches, a zero probe added to each tensor), against the prediction."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxinit import analyze
from tests.models import make_model


def ratios(model, batch_size: int = 16, loss: str = "cross_entropy", batches: int = 8,
           **options) -> dict[str, float]:
    """predicted / measured gradient variance per tensor the loss depends on."""
    analysis = analyze(model, batch_size=batch_size, backward=True, measure=True, loss=loss,
                       gradient_batches=batches, **options)
    assert not analysis.backward.warnings, analysis.backward.warnings
    out = {}
    for name, g in analysis.backward.tensors.items():
        assert g.measured_var is not None, name
        if g.measured_var > 0:
            out[name] = g.var / g.measured_var
    assert out
    return out


def assert_within(found: dict[str, float], rtol: float) -> None:
    bad = {k: round(v, 3) for k, v in found.items() if abs(v - 1) > rtol}
    assert not bad, f"predicted/measured gradient variance off by more than {rtol:.0%}: {bad}"


def weight(name, shape, rng, scale=None) -> onnx.TensorProto:
    fan_in = int(np.prod(shape[1:]))
    s = scale if scale is not None else np.sqrt(2.0 / fan_in)
    return numpy_helper.from_array((rng.standard_normal(shape) * s).astype(np.float32), name)


def array(name, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def image_model(nodes, inits, shape, out_features, name="logits") -> onnx.ModelProto:
    """A model of ``nodes`` from ``x`` [N, *shape] to ``logits`` [N, out_features]."""
    return make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", out_features])], inits)


def head(x: str, channels: int, classes: int, rng, nodes, inits) -> None:
    """GlobalAveragePool -> Flatten -> Gemm to ``logits``."""
    nodes += [helper.make_node("GlobalAveragePool", [x], ["pooled"], name="gap"),
              helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1,
                               name="fc")]
    inits += [weight("fc_w", (classes, channels), rng, scale=channels**-0.5),
              array("fc_b", np.zeros(classes))]
