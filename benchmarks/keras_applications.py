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

import tf2onnx
import tensorflow as tf
from tensorflow import keras

parser = argparse.ArgumentParser()
parser.add_argument("name")
parser.add_argument("size", type=int)
parser.add_argument("--opset", type=int, default=17)
parser.add_argument("--batch1", action="store_true")
args = parser.parse_args()
A = keras.applications
ctors = {k.lower(): getattr(A, k) for k in dir(A) if k[:1].isupper()}
m = ctors[args.name.lower()](weights=None, input_shape=(args.size, args.size, 3), classes=10)
spec = (tf.TensorSpec((1 if args.batch1 else None, args.size, args.size, 3), tf.float32,
                      name="x"),)
suffix = (f"_opset{args.opset}" if args.opset != 17 else "") + ("_b1" if args.batch1 else "")
if keras.__version__.startswith("2."):
    tf2onnx.convert.from_keras(m, input_signature=spec, opset=args.opset,
                               output_path=f"{args.name}{suffix}.onnx")
else:  # Keras 3: tf2onnx converts a tf.function of the model, not the model
    tf2onnx.convert.from_function(tf.function(lambda x: m(x, training=False)),
                                  input_signature=spec, opset=args.opset,
                                  output_path=f"{args.name}{suffix}.onnx")
print(args.name, "ok")
