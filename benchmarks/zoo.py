"""Models the speed benchmarks run on, built without downloads.

- :func:`preact_resnet164` (:func:`preact_resnet` at other depths): a pre-activation ResNet-164 for CIFAR-10 without BatchNormalization
  in the layout of Keras' ResNet v2 example (BN-ReLU-Conv with the BN removed: ReLU-Conv),
  1x1-3x3-1x1 bottlenecks of widths 16/32/64 (x4 at the block outputs), 18 blocks per stage,
  written the way tf2onnx exports the Keras model: an NHWC input with a Transpose in front,
  Conv with bias, Dense as MatMul + Add, a Transpose back to NHWC before the Flatten.
- :func:`chain`: MatMul + Add + Tanh/Relu triples with a residual Add every 4 layers, any length.
- :func:`gemm_chain`: Gemm layers with non-zero biases, each followed by a Tanh: the layers
  whose bias ``rescale --keep-bias`` keeps (y = s W x + b is not linear in s).
- :func:`export_torch`: GPT-2 (12 layers), BERT-base, ViT-B/16, MobileNetV3-small, Swin-T,
  EfficientNet-B0 exported with PyTorch in training mode (as the README says), random init;
  None when torch (or transformers, for the Hugging Face models) is not installed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.real.sequence import last_hidden_state  # noqa: E402

OPSET = 17
IR_VERSION = 8


class _Builder:
    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, kind: str) -> str:
        self.count += 1
        return f"model/{kind}_{self.count}"

    def const(self, value: np.ndarray, name: str) -> str:
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        name = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [name + ":0"], name=name, **attrs))
        return name + ":0"

    def conv(self, x: str, c_in: int, c_out: int, k: int, stride: int = 1) -> str:
        """Keras Conv2D (he-normal weights, zero bias), 'same' padding."""
        base = self.name("conv2d")
        w = self.rng.standard_normal((c_out, c_in, k, k)) * np.sqrt(2.0 / (c_in * k * k))
        wt = self.const(w.astype(np.float32), f"{base}/kernel")
        b = self.const(np.zeros(c_out, np.float32), f"{base}/bias")
        pad = (k - 1) // 2
        self.nodes.append(helper.make_node(
            "Conv", [x, wt, b], [f"{base}/BiasAdd:0"], name=f"{base}/BiasAdd",
            kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4, dilations=[1, 1],
            group=1))
        return f"{base}/BiasAdd:0"


def preact_resnet164(classes: int = 10) -> onnx.ModelProto:
    """Pre-activation ResNet-164 without BN, tf2onnx layout (see the module docstring): 18
    bottleneck blocks per stage: 390 nodes, 167 weighted layers (stem, 3 x 18 x 3 convs, 3
    projections, Dense)."""
    return preact_resnet(18, classes)


def preact_resnet(blocks: int, classes: int = 10) -> onnx.ModelProto:
    """The pre-activation bottleneck ResNet of :func:`preact_resnet164` with ``blocks`` blocks
    per stage (depth 9 * blocks + 2)."""
    b = _Builder()
    x = b.node("Transpose", ["input_1"], perm=[0, 3, 1, 2])
    x = b.node("Relu", [b.conv(x, 3, 16, 3)])
    c_in = 16
    for stage, width in enumerate((16, 32, 64)):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            # the stem's ReLU is the first block's pre-activation (Keras' ResNet v2)
            pre = x if stage == 0 and block == 0 else b.node("Relu", [x])
            h = b.node("Relu", [b.conv(pre, c_in, width, 1, stride)])
            h = b.node("Relu", [b.conv(h, width, width, 3)])
            h = b.conv(h, width, 4 * width, 1)
            skip = b.conv(pre, c_in, 4 * width, 1, stride) if block == 0 else x
            x = b.node("Add", [skip, h])
            c_in = 4 * width
    x = b.node("Relu", [x])
    x = b.node("AveragePool", [x], kernel_shape=[8, 8], strides=[8, 8])
    x = b.node("Transpose", [x], perm=[0, 2, 3, 1])
    shape = b.const(np.array([-1, c_in], np.int64), "model/flatten/Const:0")
    x = b.node("Reshape", [x, shape])
    w = b.rng.uniform(-1, 1, (c_in, classes)) * np.sqrt(6.0 / (c_in + classes))
    x = b.node("MatMul", [x, b.const(w.astype(np.float32), "model/dense/MatMul/ReadVariableOp:0")])
    x = b.node("Add", [x, b.const(np.zeros(classes, np.float32), "model/dense/BiasAdd/bias:0")])
    b.nodes.append(helper.make_node("Softmax", [x], ["dense"], name="model/dense/Softmax", axis=1))
    graph = helper.make_graph(
        b.nodes, "tf2onnx",
        [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["unk__0", 32, 32, 3])],
        [helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["unk__1", classes])],
        b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              ir_version=IR_VERSION, producer_name="tf2onnx")
    return model


def chain(n_nodes: int = 10_000, width: int = 32) -> onnx.ModelProto:
    """MatMul + Add + Tanh/Relu triples, with a residual Add every 4 layers (``n_nodes`` nodes,
    rounded up to a whole layer)."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    x, i, skip = "x", 0, "x"
    while len(nodes) < n_nodes:
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"),
                  numpy_helper.from_array(np.zeros(width, np.float32), f"b{i}")]
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"matmul{i}"),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"], name=f"add{i}"),
                  helper.make_node("Tanh" if i % 2 else "Relu", [f"a{i}"], [f"h{i}"],
                                   name=f"act{i}")]
        x = f"h{i}"
        if i % 4 == 3:
            nodes.append(helper.make_node("Add", [x, skip], [f"r{i}"], name=f"res{i}"))
            x = skip = f"r{i}"
        i += 1
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", width])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                             ir_version=IR_VERSION)


def gemm_chain(layers: int, width: int = 32) -> onnx.ModelProto:
    """``layers`` Gemm (bias C ~ N(0, 0.01)) + Tanh pairs."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        b = (0.1 * rng.standard_normal(width)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [f"g{i}"], name=f"gemm{i}"),
                  helper.make_node("Tanh", [f"g{i}"], [f"h{i}"], name=f"act{i}")]
        x = f"h{i}"
    graph = helper.make_graph(
        nodes, "gemm_chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", width])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                             ir_version=IR_VERSION)


# torch exports ---------------------------------------------------------------------------------


def _gpt2():
    from transformers import GPT2Config, GPT2Model

    config = GPT2Config(n_layer=12, attn_implementation="eager")  # GPT-2 small: 768, 12 heads
    return last_hidden_state(GPT2Model(config)), ("input_ids", (8, 128))


def _bert():
    from transformers import BertConfig, BertModel

    return last_hidden_state(BertModel(BertConfig(attn_implementation="eager"))), \
        ("input_ids", (8, 128))


def _torchvision(name: str):
    import torchvision

    return getattr(torchvision.models, name)(weights=None), ("x", (8, 3, 224, 224))


TORCH_MODELS = {
    "gpt2_12": _gpt2,
    "bert_base": _bert,
    "vit_b_16": lambda: _torchvision("vit_b_16"),
    "mobilenet_v3_small": lambda: _torchvision("mobilenet_v3_small"),
    "swin_t": lambda: _torchvision("swin_t"),
    "efficientnet_b0": lambda: _torchvision("efficientnet_b0"),
}


def export_torch(name: str, path: Path) -> str | None:
    """Export ``TORCH_MODELS[name]`` to ``path`` in training mode (dynamic batch); None on
    success, else why it was skipped (torch or transformers missing)."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    try:
        torch.manual_seed(0)
        model, (input_name, shape) = TORCH_MODELS[name]()
    except ImportError as exc:
        return f"{exc.name} is not installed"
    example = (torch.randint(0, 1000, shape) if input_name == "input_ids"
               else torch.randn(shape))
    model.train()
    torch.onnx.export(
        model, (example,), str(path), input_names=[input_name],
        training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False,
        opset_version=OPSET, dynamo=False, dynamic_axes={input_name: {0: "batch"}})
    proto = onnx.load(str(path))
    proto.ir_version = min(proto.ir_version, IR_VERSION)
    onnx.save(proto, str(path))
    return None
