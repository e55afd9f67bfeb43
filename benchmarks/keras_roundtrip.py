"""The Keras adapter's round trip on Keras applications and recurrent classifiers: build
(random init, ``keras.utils.set_random_seed(0)``), export with tf2onnx (opset 17, dynamic
batch), ``rescale --method autoinit``, ``load_into`` the Keras model, and the model's own
output against onnxruntime's on the rescaled file (batch 8 of N(0, 1), or token ids). Run in the
Keras 2 venv that ``.ci/framework_venvs`` builds (it has onnxinit's core dependencies), one
model per process (TensorFlow's memory), from the repository root:

    PYTHONPATH=$PWD .ci-framework-venvs/keras2/bin/python benchmarks/keras_roundtrip.py mobilenet:224
    PYTHONPATH=$PWD .ci-framework-venvs/keras2/bin/python benchmarks/keras_roundtrip.py keras_bigru

``NAME:SIZE`` is a ``keras.applications`` constructor (case-insensitive) at SIZE x SIZE;
``keras_NAME`` a model of ``benchmarks/keras_recurrent.py``. Prints the mapping summary, the
largest relative difference and the output variance before and after the rescale.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tensorflow as tf  # noqa: E402
import tf2onnx  # noqa: E402
from tensorflow import keras  # noqa: E402

from onnxinit.adapters.keras import load_into  # noqa: E402
from onnxinit.rescale import rescale  # noqa: E402
from tests.adapters.torch_roundtrip import ort_outputs  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
import keras_recurrent  # noqa: E402

BATCH = 8


def _application(name: str, size: int):
    ctors = {k.lower(): getattr(keras.applications, k) for k in dir(keras.applications)
             if k[:1].isupper()}
    return ctors[name.lower()](weights=None, input_shape=(size, size, 3), classes=10)


def main(spec: str) -> None:
    keras.utils.set_random_seed(0)
    if spec.startswith("keras_"):
        model = keras_recurrent.build(spec[len("keras_"):])
    else:
        name, size = spec.split(":")
        model = _application(name, int(size))
    shape = (BATCH, *model.inputs[0].shape[1:])
    dtype = model.inputs[0].dtype
    rng = np.random.default_rng(0)
    x = (rng.integers(0, 1000, shape).astype(np.int32) if dtype == tf.int32
         else rng.standard_normal(shape).astype(np.float32))
    with tempfile.TemporaryDirectory(prefix="keras-roundtrip-") as scratch:
        original = Path(scratch) / "model.onnx"
        signature = (tf.TensorSpec((None, *shape[1:]), dtype, name="x"),)
        tf2onnx.convert.from_keras(model, input_signature=signature, opset=17,
                                   output_path=str(original))
        before = float(np.var(np.asarray(model(x, training=False))))
        rescaled = rescale(original, "autoinit", output=Path(scratch) / "r.onnx").output
        report = load_into(model, rescaled, original)
        expected = ort_outputs(rescaled, {"x": x})
        got = np.asarray(model(x, training=False))
        rel = float(np.max(np.abs(got - expected)) / np.max(np.abs(expected)))
        print(f"{spec}: {report.summary()}; rel. diff {rel:.1e}; output var "
              f"{before:.3g} -> {float(np.var(got)):.3g}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 2:
        main(sys.argv[1])
    else:  # one process per model
        for spec in sys.argv[1:]:
            subprocess.run([sys.executable, __file__, spec], check=False)
