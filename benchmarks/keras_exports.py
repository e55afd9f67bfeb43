"""The Keras loop on a pre-activation ResNet-56 (CIFAR, batch 8), with and without
BatchNormalization, exported by the installed Keras (Keras 2 + tf2onnx, or Keras 3's
``model.export`` on the backend ``KERAS_BACKEND`` names): rescale with autoinit (CPU seconds),
load back with the Keras adapter, and the model's output against onnxruntime's on the rescaled
model. Run it in the venvs ``.ci/framework_venvs`` builds, from the repository root:

    PYTHONPATH=$PWD .ci-framework-venvs/keras2/bin/python benchmarks/keras_exports.py
    KERAS_BACKEND=tensorflow PYTHONPATH=$PWD .ci-framework-venvs/keras3/bin/python \\
        benchmarks/keras_exports.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onnxinit.adapters.keras import load_into  # noqa: E402
from onnxinit.rescale import rescale  # noqa: E402
from tests.adapters.test_keras_exports import (  # noqa: E402
    EXPORTER,
    export,
    keras,
    preact_resnet,
)
from tests.adapters.torch_roundtrip import ort_outputs  # noqa: E402

SHAPE = (8, 32, 32, 3)


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        _compare_in(Path(scratch))


def _compare_in(folder: Path) -> None:
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    for bn in (False, True):
        keras.utils.set_random_seed(0)
        model = preact_resnet(bn, blocks=9, shape=SHAPE)
        model(x, training=False)
        original = export(model, folder / f"resnet56_{bn}.onnx")
        start = time.process_time()
        rescaled = rescale(original, "autoinit", output=folder / f"resnet56_{bn}.r.onnx").output
        cpu = time.process_time() - start
        report = load_into(model, rescaled, original)
        expected = ort_outputs(rescaled, {"x": x})
        rel = float(np.max(np.abs(np.asarray(model(x, training=False)) - expected))
                    / np.max(np.abs(expected)))
        print(f"{EXPORTER} preact ResNet-56 bn={bn}: rescale {cpu:.1f} s CPU; "
              f"{report.summary()}; rel. diff {rel:.1e}")


if __name__ == "__main__":
    main()
