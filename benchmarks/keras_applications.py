"""Keras applications with random weights (``weights=None``, 10 classes), exported by tf2onnx
(Keras 2: run in ``.ci-framework-venvs/keras2``, which ``.ci/framework_venvs`` builds), for
``benchmarks/real_exports.py --onnx``. One model per call, written to ``NAME.onnx`` in the
current folder; the README's table used these sizes:

    for m in resnet50:64 mobilenetv2:96 efficientnetb0:64 densenet121:64 vgg16:64 \\
             mobilenetv3small:96 inceptionv3:96 convnexttiny:64 efficientnetv2b0:64 \\
             inceptionresnetv2:96; do
        .ci-framework-venvs/keras2/bin/python benchmarks/keras_applications.py ${m%:*} ${m#*:}
    done
"""

import sys

import tf2onnx
import tensorflow as tf
from tensorflow import keras

A = keras.applications
name, size = sys.argv[1], int(sys.argv[2])
ctor = {"resnet50": A.ResNet50, "mobilenetv2": A.MobileNetV2, "efficientnetb0": A.EfficientNetB0,
        "densenet121": A.DenseNet121, "vgg16": A.VGG16, "inceptionv3": A.InceptionV3,
        "mobilenetv3small": A.MobileNetV3Small, "xception": A.Xception,
        "convnexttiny": A.ConvNeXtTiny, "efficientnetv2b0": A.EfficientNetV2B0,
        "inceptionresnetv2": A.InceptionResNetV2}[name]
m = ctor(weights=None, input_shape=(size, size, 3), classes=10)
spec = (tf.TensorSpec((None, size, size, 3), tf.float32, name="x"),)
tf2onnx.convert.from_keras(m, input_signature=spec, opset=17, output_path=f"{name}.onnx")
print(name, "ok")
