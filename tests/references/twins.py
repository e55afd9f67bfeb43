"""Twin models for the reference checks: each architecture is built once as an ONNX graph (with
onnx.helper) and once as a functional PyTorch forward ``forward(params, x)`` over the same
initializer names, so the references differentiate with torch autograd what onnxinit
differentiates with its own autodiff. The ONNX file is the single source of the values (the torch
side reads them back).

- ``tanh_mlp``: Gemm + Tanh layers with biases.
- ``resnet20_maxpool``: a normalization-free ResNet-20 (3x3 stem, ReLU, 2x2 MaxPool, three stages
  of three basic blocks with 1x1 projection shortcuts, global average pooling, Gemm).
- ``transformer``: token embedding (Gather) plus learned positions, two post-LN encoder layers
  (MatMul projections, softmax attention scaled by a constant, LayerNormalization, GELU in its
  tanh form as GPT-2 exports write it, with Constant nodes for its constants), mean pooling, Gemm.
  (The tanh form keeps the float64 graph inside onnxruntime, which has no double Erf.)

Values follow PyTorch's defaults: Linear/Conv weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
embeddings N(0, 1), LayerNorm scale 1 and shift 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.models import make_model


@dataclass
class Twin:
    """An ONNX model, its torch forward, the kind of each parameter ('weight' for multiplicative
    tensors, 'bias' for additive ones: the papers' W_i and b_i) and the input shape of a batch."""

    name: str
    model: onnx.ModelProto
    forward: Callable  # (params: dict[str, torch.Tensor], x: torch.Tensor) -> logits
    kinds: dict[str, str]
    batch_size: int

    def parameters(self, dtype=None) -> dict:
        """Initializer name -> torch tensor (float64 unless ``dtype``), in initializer order."""
        import torch

        return {init.name: torch.from_numpy(numpy_helper.to_array(init).copy()).to(
            dtype or torch.float64) for init in self.model.graph.initializer
            if init.name in self.kinds}


class _Builder:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.kinds: dict[str, str] = {}
        self.count = 0

    def param(self, name, shape, kind, *, bound=None, normal=False, fill=None):
        if fill is not None:
            value = np.full(shape, fill)
        elif normal:
            value = self.rng.standard_normal(shape)
        else:
            value = self.rng.uniform(-bound, bound, shape)
        self.inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        self.kinds[name] = kind
        return name

    def constant(self, name, value):
        array = np.asarray(value)
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op, inputs, **attrs):
        self.count += 1
        out = f"{op.lower()}{self.count}"
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out

    def scalar_node(self, value):
        """A float Constant node (not an initializer: exporters write GELU's constants so)."""
        self.count += 1
        out = f"const{self.count}"
        self.nodes.append(helper.make_node(
            "Constant", [], [out], value=numpy_helper.from_array(np.array(value, np.float32))))
        return out


def _linear_init(b: _Builder, name, fan_in, fan_out, transposed=True):
    bound = 1 / math.sqrt(fan_in)
    shape = (fan_out, fan_in) if transposed else (fan_in, fan_out)
    return (b.param(f"{name}.weight", shape, "weight", bound=bound),
            b.param(f"{name}.bias", (fan_out,), "bias", bound=bound))


# --- tanh MLP ---------------------------------------------------------------------------------


def tanh_mlp(widths=(12, 24, 24, 24, 10), batch_size=8, seed=0) -> Twin:
    b = _Builder(seed)
    x = "x"
    names = []
    for i in range(len(widths) - 1):
        w, bias = _linear_init(b, f"fc{i}", widths[i], widths[i + 1])
        names.append((w, bias))
        x = b.node("Gemm", [x, w, bias], transB=1)
        if i < len(widths) - 2:
            x = b.node("Tanh", [x])
    model = make_model(b.nodes,
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", widths[0]])],
                       [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", widths[-1]])],
                       b.inits)

    def forward(params, inputs):
        import torch

        h = inputs
        for i, (w, bias) in enumerate(names):
            h = h @ params[w].T + params[bias]
            if i < len(names) - 1:
                h = torch.tanh(h)
        return h

    return Twin("tanh_mlp", model, forward, b.kinds, batch_size)


# --- ResNet-20 without normalization, with a max-pooling stem -----------------------------------


def resnet20_maxpool(width=4, image=8, classes=10, batch_size=8, seed=0) -> Twin:
    b = _Builder(seed)
    convs = []  # (weight, bias, stride, pad) in forward order, with their role

    def conv(name, x, cin, cout, k, stride=1):
        fan_in = cin * k * k
        bound = 1 / math.sqrt(fan_in)
        w = b.param(f"{name}.weight", (cout, cin, k, k), "weight", bound=bound)
        bias = b.param(f"{name}.bias", (cout,), "bias", bound=bound)
        convs.append((w, bias, stride, k // 2))
        return b.node("Conv", [x, w, bias], kernel_shape=[k, k], strides=[stride, stride],
                      pads=[k // 2] * 4)

    x = b.node("Relu", [conv("stem", "x", 3, width, 3)])
    x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    plan = []  # per block: (has projection)
    cin = width
    for stage, cout in enumerate((width, 2 * width, 4 * width)):
        for i in range(3):
            stride = 2 if stage > 0 and i == 0 else 1
            p = f"s{stage}b{i}"
            h = b.node("Relu", [conv(f"{p}.conv1", x, cin, cout, 3, stride)])
            h = conv(f"{p}.conv2", h, cout, cout, 3)
            project = stride != 1 or cin != cout
            skip = conv(f"{p}.proj", x, cin, cout, 1, stride) if project else x
            x = b.node("Relu", [b.node("Add", [h, skip])])
            plan.append(project)
            cin = cout
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x])])
    w, bias = _linear_init(b, "fc", cin, classes)
    logits = b.node("Gemm", [x, w, bias], transB=1)
    model = make_model(
        b.nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, image, image])],
        [helper.make_tensor_value_info(logits, TensorProto.FLOAT, ["N", classes])], b.inits)

    def forward(params, inputs):
        import torch.nn.functional as F

        layers = iter(convs)

        def apply(h):
            w_, b_, stride, pad = next(layers)
            return F.conv2d(h, params[w_], params[b_], stride=stride, padding=pad)

        h = F.max_pool2d(F.relu(apply(inputs)), 2)
        for project in plan:
            out = apply(F.relu(apply(h)))
            h = F.relu(out + (apply(h) if project else h))
        return h.mean(dim=(2, 3)) @ params[w].T + params[bias]

    return Twin("resnet20_maxpool", model, forward, b.kinds, batch_size)


# --- 2-layer post-LN transformer encoder --------------------------------------------------------


def transformer(vocab=20, seq=6, d=16, heads=2, ff=32, layers=2, classes=5, batch_size=8,
                seed=0) -> Twin:
    b = _Builder(seed)
    dh = d // heads
    tok = b.param("tok", (vocab, d), "weight", normal=True)
    pos = b.param("pos", (seq, d), "weight", normal=True)
    split_shape = b.constant("split_shape", np.array([0, seq, heads, dh], np.int64))
    merge_shape = b.constant("merge_shape", np.array([0, seq, d], np.int64))
    attention_scale = b.constant("attention_scale", np.array(1 / math.sqrt(dh), np.float32))
    pool_axes = b.constant("pool_axes", np.array([1], np.int64))
    h = b.node("Add", [b.node("Gather", [tok, "ids"]), pos])
    blocks = []
    for i in range(layers):
        p = f"layer{i}"
        proj = {k: _linear_init(b, f"{p}.{k}", d, d, transposed=False) for k in "qkvo"}
        ln1 = (b.param(f"{p}.ln1.weight", (d,), "weight", fill=1.0),
               b.param(f"{p}.ln1.bias", (d,), "bias", fill=0.0))
        ff1 = _linear_init(b, f"{p}.ff1", d, ff, transposed=False)
        ff2 = _linear_init(b, f"{p}.ff2", ff, d, transposed=False)
        ln2 = (b.param(f"{p}.ln2.weight", (d,), "weight", fill=1.0),
               b.param(f"{p}.ln2.bias", (d,), "bias", fill=0.0))
        blocks.append((proj, ln1, ff1, ff2, ln2))

        def dense(x, wb):
            return b.node("Add", [b.node("MatMul", [x, wb[0]]), wb[1]])

        def heads_of(x):
            return b.node("Transpose", [b.node("Reshape", [x, split_shape])], perm=[0, 2, 1, 3])

        q, k, v = (heads_of(dense(h, proj[n])) for n in "qkv")
        scores = b.node("Mul", [b.node("MatMul", [q, b.node("Transpose", [k], perm=[0, 1, 3, 2])]),
                                attention_scale])
        context = b.node("MatMul", [b.node("Softmax", [scores], axis=-1), v])
        context = b.node("Reshape", [b.node("Transpose", [context], perm=[0, 2, 1, 3]),
                                     merge_shape])
        h = b.node("LayerNormalization", [b.node("Add", [h, dense(context, proj["o"])]), *ln1],
                   axis=-1, epsilon=1e-5)
        u = dense(h, ff1)
        cubic = b.node("Mul", [b.node("Mul", [b.node("Mul", [u, u]), u]),
                               b.scalar_node(0.044715)])
        inner = b.node("Mul", [b.node("Add", [u, cubic]), b.scalar_node(math.sqrt(2 / math.pi))])
        gelu = b.node("Mul", [b.node("Mul", [u, b.node("Add", [b.node("Tanh", [inner]),
                                                                b.scalar_node(1.0)])]),
                              b.scalar_node(0.5)])
        h = b.node("LayerNormalization", [b.node("Add", [h, dense(gelu, ff2)]), *ln2], axis=-1,
                   epsilon=1e-5)
    pooled = b.node("ReduceMean", [h, pool_axes], keepdims=0)
    w, bias = _linear_init(b, "head", d, classes)
    logits = b.node("Gemm", [pooled, w, bias], transB=1)
    model = make_model(
        b.nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", seq])],
        [helper.make_tensor_value_info(logits, TensorProto.FLOAT, ["N", classes])], b.inits)

    def forward(params, ids):
        import torch
        import torch.nn.functional as F

        x = params[tok][ids] + params[pos]
        n = x.shape[0]
        for proj, ln1, ff1, ff2, ln2 in blocks:
            def dense(y, wb):
                return y @ params[wb[0]] + params[wb[1]]

            def heads_of(y):
                return y.reshape(n, seq, heads, dh).transpose(1, 2)

            q, k, v = (heads_of(dense(x, proj[c])) for c in "qkv")
            attention = torch.softmax(q @ k.transpose(-1, -2) * (1 / math.sqrt(dh)), dim=-1)
            context = (attention @ v).transpose(1, 2).reshape(n, seq, d)
            x = F.layer_norm(x + dense(context, proj["o"]), (d,), params[ln1[0]],
                             params[ln1[1]], eps=1e-5)
            u = dense(x, ff1)
            x = F.layer_norm(x + dense(F.gelu(u, approximate="tanh"), ff2), (d,),
                             params[ln2[0]], params[ln2[1]], eps=1e-5)
        return x.mean(dim=1) @ params[w].T + params[bias]

    return Twin("transformer", model, forward, b.kinds, batch_size)


TWINS = {"tanh_mlp": tanh_mlp, "resnet20_maxpool": resnet20_maxpool, "transformer": transformer}
