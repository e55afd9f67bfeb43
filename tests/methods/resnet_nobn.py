"""A normalization-free ResNet-20 for CIFAR built with onnx.helper (He et al. 2016, option B
shortcuts): a 3x3 stem, three stages of three basic blocks (16, 32, 64 channels; the first block
of stages 2 and 3 strides by 2 and projects its skip with a 1x1 convolution), ReLU after each
Add, global average pooling and a linear classifier. Weights are PyTorch's defaults
(Kaiming-uniform with a=sqrt(5), so U(-1/sqrt(fan_in), 1/sqrt(fan_in)), biases likewise)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from ..models import make_model


def resnet20_nobn(blocks_per_stage=3, image=16, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def param(name, shape, fan_in):
        bound = 1 / np.sqrt(fan_in)
        inits.append(numpy_helper.from_array(
            rng.uniform(-bound, bound, shape).astype(np.float32), name))
        return name

    def conv(name, x, cin, cout, k, stride=1):
        w = param(f"{name}.weight", (cout, cin, k, k), cin * k * k)
        b = param(f"{name}.bias", (cout,), cin * k * k)
        nodes.append(helper.make_node("Conv", [x, w, b], [f"{name}.out"], name=name,
                                      kernel_shape=[k, k], strides=[stride, stride],
                                      pads=[k // 2] * 4))
        return f"{name}.out"

    def relu(name, x):
        nodes.append(helper.make_node("Relu", [x], [f"{name}.out"], name=name))
        return f"{name}.out"

    x = relu("stem.relu", conv("stem.conv", "x", 3, 16, 3))
    cin = 16
    for stage, width in enumerate((16, 32, 64)):
        for i in range(blocks_per_stage):
            p = f"layer{stage + 1}.{i}"
            stride = 2 if (stage > 0 and i == 0) else 1
            h = relu(f"{p}.relu1", conv(f"{p}.conv1", x, cin, width, 3, stride))
            h = conv(f"{p}.conv2", h, width, width, 3)
            skip = x if stride == 1 and cin == width else conv(f"{p}.shortcut", x, cin, width, 1,
                                                               stride)
            nodes.append(helper.make_node("Add", [h, skip], [f"{p}.add.out"], name=f"{p}.add"))
            x = relu(f"{p}.relu2", f"{p}.add.out")
            cin = width
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"))
    w = param("fc.weight", (classes, 64), 64)
    b = param("fc.bias", (classes,), 64)
    nodes.append(helper.make_node("Gemm", ["flat", w, b], ["logits"], transB=1, name="fc"))
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, image, image])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        inits,
    )
