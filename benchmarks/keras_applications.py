"""Keras applications with random weights (``weights=None``, 10 classes), exported by tf2onnx
(Keras 2: run in ``.ci-framework-venvs/keras2``, which ``.ci/framework_venvs`` builds; Keras 3
through a ``tf.function`` of the model), for
``benchmarks/real_exports.py --onnx``. One model per call, written to ``NAME.onnx`` in the
current folder; NAME is any ``keras.applications`` constructor, case-insensitive
(``resnet50v2``, ``regnetx002``, ``efficientnetv2b1``, ...). The README's table used these sizes:

    for m in resnet50:64 mobilenetv2:96 efficientnetb0:64 densenet121:64 vgg16:64 \\
             mobilenetv3small:96 inceptionv3:96 convnexttiny:64 efficientnetv2b0:64 \\
             inceptionresnetv2:96; do
        .ci-framework-venvs/keras2/bin/python benchmarks/keras_applications.py ${m%:*} ${m#*:}
    done

``--opset N`` (default 17) and ``--batch1`` (a static batch of 1 instead of a dynamic batch)
write ``NAME_opsetN.onnx`` / ``NAME_b1.onnx`` (docs/robustness.md's Keras variants).
"""

import argparse
import gc

import tf2onnx
import tensorflow as tf
from tensorflow import keras
from tf2onnx import optimizer as tf2onnx_optimizer


def _collecting(cls):
    """tf2onnx's optimizer loop deep-copies the graph, weights included, before every pass, and
    the copies sit in reference cycles: without a collection between passes the conversion
    grows by the weights' size per pass (ResNet50: 2.3 GB -> 6.4 GB peak). Same output."""

    class Collecting(cls):
        def _optimize(self, graph):
            gc.collect()
            return super()._optimize(graph)

    return Collecting


for _name, _cls in list(tf2onnx_optimizer._optimizers.items()):
    tf2onnx_optimizer._optimizers[_name] = _collecting(_cls)

parser = argparse.ArgumentParser()
parser.add_argument("name")
parser.add_argument("size", type=int)
parser.add_argument("--opset", type=int, default=17)
parser.add_argument("--batch1", action="store_true")
args = parser.parse_args()
keras.utils.set_random_seed(0)
A = keras.applications
ctors = {k.lower(): getattr(A, k) for k in dir(A) if k[:1].isupper()}
m = ctors[args.name.lower()](weights=None, input_shape=(args.size, args.size, 3), classes=10)
spec = (tf.TensorSpec((1 if args.batch1 else None, args.size, args.size, 3), tf.float32,
                      name="x"),)
suffix = (f"_opset{args.opset}" if args.opset != 17 else "") + ("_b1" if args.batch1 else "")
if __import__("keras").__version__.startswith("2."):  # tf.keras has no __version__ in TF 2.15
    tf2onnx.convert.from_keras(m, input_signature=spec, opset=args.opset,
                               output_path=f"{args.name}{suffix}.onnx")
else:  # Keras 3: tf2onnx converts a tf.function of the model, not the model
    tf2onnx.convert.from_function(tf.function(lambda x: m(x, training=False)),
                                  input_signature=spec, opset=args.opset,
                                  output_path=f"{args.name}{suffix}.onnx")
print(args.name, "ok")
