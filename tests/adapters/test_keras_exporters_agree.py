"""One BatchNorm network, three exporters, one prediction: the networks that
``test_keras_exports.py::test_export_for_the_exporter_comparison`` wrote under
``ONNXINIT_KERAS_EXPORTS`` (Keras 2 + tf2onnx, Keras 3's TensorFlow and JAX exports, the same
numpy-seeded kernels) get, layer by layer, predicted output variances within 10% of the
Keras 2 + tf2onnx export's (``.ci/framework_venvs`` runs it after the three exports; skipped
without the folder, failing instead with ``ONNXINIT_REQUIRE_KERAS=1``).

Layers are paired by their kernels (cosine above 0.999 in the ONNX layout; tf2onnx folds a
fresh BatchNorm's ``1/sqrt(1 + eps)`` into the kernel, which leaves the direction alone)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from onnxinit.analysis import analyze

REFERENCE = "keras2-tf2onnx"
NETWORKS = ["small_cnn", "residual_cnn", "preact_resnet20"]
TOLERANCE = 1.10


def _folder(exporter: str, network: str) -> Path:
    folder = os.environ.get("ONNXINIT_KERAS_EXPORTS")
    path = Path(folder or ".") / exporter / f"{network}.onnx"
    if folder and path.exists():
        return path
    if os.environ.get("ONNXINIT_REQUIRE_KERAS") == "1":
        pytest.fail(f"ONNXINIT_REQUIRE_KERAS=1 but {path} was not exported", pytrace=False)
    pytest.skip(f"no {exporter} export of {network} (set ONNXINIT_KERAS_EXPORTS)")


def layer_predictions(path: Path) -> list[tuple[np.ndarray, float]]:
    """(unit kernel in the ONNX layout, predicted output variance) of every layer."""
    analysis = analyze(path, batch_size=2)
    graph = analysis.graph  # the analysed graph: a folded BatchNorm's Conv writes a tensor of
    moments = analysis.propagation.moments  # its own there, which the report does not list
    out = []
    for layer in graph.layers:
        kernel = np.asarray(graph.value(graph.node(layer.node).input[layer.weight_input]),
                            np.float64)
        out.append((kernel / np.linalg.norm(kernel), moments[layer.output].total()[1]))
    return out


def worst_ratio(reference, other) -> float:
    """The largest ratio (>= 1) between paired layers' predicted variances."""
    assert len(reference) == len(other)
    worst = 1.0
    for kernel, var in reference:
        cosines = [abs(float(np.sum(kernel * k))) if k.shape == kernel.shape else 0.0
                   for k, _ in other]
        best = int(np.argmax(cosines))
        assert cosines[best] > 0.999, "no layer of the other export has this kernel"
        worst = max(worst, var / other[best][1], other[best][1] / var)
    return worst


# Keras 3's JAX export keeps the network channels-last between Transposes around each Conv;
# the analysis reads those stretches channels-first (passes/channels_first.py), so the position
# classes and the spatial correlation reach every conv: 1.001x the Keras 2 export's prediction
# on the residual CNN and the pre-act ResNet-20 (1.17x and 1.13x before).


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("exporter", ["keras3-tensorflow", "keras3-jax"])
def test_exporters_predict_the_same_network_alike(exporter, network):
    reference = layer_predictions(_folder(REFERENCE, network))
    other = layer_predictions(_folder(exporter, network))
    ratio = worst_ratio(reference, other)
    print(f"{exporter} vs {REFERENCE}, {network}: worst layer ratio {ratio:.3f}")
    assert ratio <= TOLERANCE
