"""Regenerate the sample ONNX models in this folder (needs torch), or write a synthetic large graph.

    python sample_models/build.py                       # rebuild the five sample models
    python sample_models/build.py --measure             # only print sizes, nodes, output variances
    python sample_models/build.py --synthetic OUT.onnx [--nodes 10000]

The five models are exported from PyTorch with the TorchScript-based exporter
(``torch.onnx.export(..., dynamo=False)``), opset 17, then re-saved with ``ir_version = 8``
(onnxruntime reads at most IR 13, onnx writes newer by default). Everything is seeded, so two
runs write byte-identical files. The variances printed for each model are measured with
onnxruntime on a batch of 32 N(0, 1) inputs (uniform random token ids for the transformer), with
graph optimizations disabled (ORT_DISABLE_ALL). Training-mode BatchNormalization is not safe under
onnxruntime's default optimizations: its ConstantSharing pass merges equal initializers of at most
8 elements (a BN's zero bias with its zero running mean, its unit scale with its unit running
variance), and the BN kernel then writes the updated running statistics into that shared buffer,
so the output is wrong and changes from run to run. resnet20_bn.onnx (16 channels or more) is not
affected, but measure with optimizations off anyway.

The synthetic graph (``build_wide_graph``) is built with onnx.helper only (no torch) and is not
saved here by default.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
OPSET = 17
IR_VERSION = 8
MEASURE_BATCH = 32
NAMES = ["tanh_mlp50", "small_cnn", "resnet20_bn", "resnet20_nobn", "transformer_postln"]


# --- PyTorch models ----------------------------------------------------------------------------


def _modules():
    """The nn.Module classes (defined lazily so that the rest of the script runs without torch)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class TanhMLP(nn.Module):
        """``depth`` Linear(width, width) layers with Tanh between them; PyTorch default init
        (weights U(-1/sqrt(fan_in), 1/sqrt(fan_in)), i.e. variance 1/(3 fan_in): the signal
        variance shrinks layer after layer)."""

        def __init__(self, depth=50, width=64):
            super().__init__()
            layers = []
            for i in range(depth):
                layers.append(nn.Linear(width, width))
                if i < depth - 1:
                    layers.append(nn.Tanh())
            self.layers = nn.Sequential(*layers)

        def forward(self, x):
            return self.layers(x)

    class SmallCNN(nn.Module):
        """Three 3x3 conv + ReLU stages (16, 32, 64 channels, 2x2 max pooling after the first
        two), global average pooling and a linear classifier; PyTorch default init, no
        normalization. The flatten is written ``x.view(x.size(0), -1)`` as in many scripts, which
        the exporter turns into a Shape/Gather/Unsqueeze/Concat/Reshape subgraph."""

        def __init__(self, classes=10):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
            self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
            self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
            self.fc = nn.Linear(64, classes)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            x = F.relu(self.conv3(x))
            x = F.adaptive_avg_pool2d(x, 1)
            x = x.view(x.size(0), -1)
            return self.fc(x)

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride, bn):
            super().__init__()
            norm = nn.BatchNorm2d if bn else (lambda c: nn.Identity())
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=not bn)
            self.bn1 = norm(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=not bn)
            self.bn2 = norm(cout)
            if stride != 1 or cin != cout:  # option B: 1x1 strided projection (+ BN)
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=not bn),
                                              norm(cout))
            else:
                self.shortcut = nn.Identity()

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return F.relu(out + self.shortcut(x))

    class ResNet20(nn.Module):
        """CIFAR ResNet-20 (He et al. 2016): 3x3 stem, 3 stages x 3 basic blocks (16/32/64
        channels, stride 2 at the start of stages 2 and 3 with a 1x1 projection shortcut), global
        average pooling, Linear(64, classes). Convs: Kaiming-normal (fan_out, relu) as in
        torchvision; BN weight 1, bias 0; conv biases (no-BN variant) and the Linear keep
        PyTorch's default init."""

        def __init__(self, bn=True, blocks=3, classes=10):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=not bn)
            self.bn1 = nn.BatchNorm2d(16) if bn else nn.Identity()
            stages, cin = [], 16
            for stage, width in enumerate((16, 32, 64)):
                blocks_ = []
                for i in range(blocks):
                    stride = 2 if stage > 0 and i == 0 else 1
                    blocks_.append(BasicBlock(cin, width, stride, bn))
                    cin = width
                stages.append(nn.Sequential(*blocks_))
            self.layer1, self.layer2, self.layer3 = stages
            self.fc = nn.Linear(64, classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

        def forward(self, x):
            x = F.relu(self.bn1(self.conv1(x)))
            x = self.layer3(self.layer2(self.layer1(x)))
            x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
            return self.fc(x)

    class PostLNTransformer(nn.Module):
        """Token + learned positional embeddings, ``layers`` post-LN nn.TransformerEncoderLayer
        (GELU feed-forward, dropout 0.1, batch_first), mean pooling over the sequence,
        Linear(d_model, classes). The layers are constructed one by one (nn.TransformerEncoder
        deep-copies a single layer, so all its layers would start with identical weights)."""

        def __init__(self, vocab=100, seq=16, d_model=64, heads=4, ff=128, layers=4, classes=10):
            super().__init__()
            self.tok = nn.Embedding(vocab, d_model)
            self.pos = nn.Embedding(seq, d_model)
            self.layers = nn.ModuleList(
                nn.TransformerEncoderLayer(d_model, heads, ff, dropout=0.1, activation="gelu",
                                           batch_first=True, norm_first=False)
                for _ in range(layers))
            self.head = nn.Linear(d_model, classes)

        def forward(self, input_ids):
            positions = torch.arange(input_ids.size(1), device=input_ids.device)
            h = self.tok(input_ids) + self.pos(positions).unsqueeze(0)
            for layer in self.layers:
                h = layer(h)
            return self.head(h.mean(dim=1))

    return TanhMLP, SmallCNN, ResNet20, PostLNTransformer


def _export(model, example, path: Path, input_name: str, output_name: str, training: bool):
    import torch

    mode = torch.onnx.TrainingMode.TRAINING if training else torch.onnx.TrainingMode.EVAL
    model.train(training)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation and tracer warnings
        torch.onnx.export(
            model, (example,), str(path), dynamo=False, opset_version=OPSET,
            input_names=[input_name], output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
            training=mode, do_constant_folding=not training,
        )
    model_proto = onnx.load(str(path))
    model_proto.ir_version = IR_VERSION
    onnx.checker.check_model(model_proto, full_check=True)
    onnx.save(model_proto, str(path))
    stray = [p.name for p in path.parent.glob(path.name + "*") if p != path]
    assert not stray, f"external data written next to {path.name}: {stray}"


def build_samples(out_dir: Path = HERE) -> list[Path]:
    import torch

    torch.use_deterministic_algorithms(True)
    TanhMLP, SmallCNN, ResNet20, PostLNTransformer = _modules()
    specs = [
        ("tanh_mlp50", lambda: TanhMLP(), lambda g: torch.randn(2, 64, generator=g), "x", "y",
         False),
        ("small_cnn", lambda: SmallCNN(), lambda g: torch.randn(2, 3, 32, 32, generator=g), "x",
         "logits", False),
        ("resnet20_bn", lambda: ResNet20(bn=True),
         lambda g: torch.randn(2, 3, 32, 32, generator=g), "x", "logits", True),
        ("resnet20_nobn", lambda: ResNet20(bn=False),
         lambda g: torch.randn(2, 3, 32, 32, generator=g), "x", "logits", False),
        ("transformer_postln", lambda: PostLNTransformer(),
         lambda g: torch.randint(0, 100, (2, 16), generator=g), "input_ids", "logits", False),
    ]
    paths = []
    for seed, (name, make, example, input_name, output_name, training) in enumerate(specs):
        torch.manual_seed(seed)
        model = make()
        # the training-mode trace runs BN forward once, which would move the running statistics
        # away from their initial values (0 and 1) in the exported initializers: keep a copy
        state = {k: v.clone() for k, v in model.state_dict().items()}
        generator = torch.Generator().manual_seed(1000 + seed)
        path = out_dir / f"{name}.onnx"
        _export(model, example(generator), path, input_name, output_name, training)
        if training:
            _restore_buffers(path, state)
        paths.append(path)
    return paths


def _restore_buffers(path: Path, state) -> None:
    """Write the module's initial buffers (BN running mean/var) back over the initializers the
    training-mode trace updated, so the file holds the network as constructed."""
    model = onnx.load(str(path))
    for init in model.graph.initializer:
        if init.name in state and (init.name.endswith("running_mean")
                                   or init.name.endswith("running_var")):
            value = state[init.name].numpy().astype(numpy_helper.to_array(init).dtype)
            init.CopyFrom(numpy_helper.from_array(value, init.name))
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


# --- measuring ---------------------------------------------------------------------------------


def random_feeds(model: onnx.ModelProto, batch: int = MEASURE_BATCH, seed: int = 0):
    """N(0, 1) for float inputs, uniform token ids below the embedding table's row count for
    integer inputs; dynamic dimensions get ``batch``."""
    rng = np.random.default_rng(seed)
    initializers = {t.name: t for t in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else batch for d in tensor_type.shape.dim]
        if tensor_type.elem_type == TensorProto.FLOAT:
            feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
        else:
            rows = next((initializers[n.input[0]].dims[0] for n in model.graph.node
                         if n.op_type == "Gather" and n.input[1] == value.name
                         and n.input[0] in initializers), 2)
            dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
            feeds[value.name] = rng.integers(0, rows, shape).astype(dtype)
    return feeds


def probes(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(label, tensor) pairs along the depth of a sample model, for the variance profile: the
    Gemm outputs of the MLP, the ReLU outputs of the CNN, the stem and the nine block outputs (the
    ReLU after each residual Add) of the ResNets, the embedding sum and the residual sums that
    enter each LayerNormalization of the transformer."""
    nodes = list(model.graph.node)
    ops = {n.op_type for n in nodes}
    if "LayerNormalization" in ops:
        embed = next(n for n in nodes if n.op_type == "Add")
        lns = [n for n in nodes if n.op_type == "LayerNormalization"]
        return [("embed", embed.output[0])] + [
            (f"ln{i + 1} in", n.input[0]) for i, n in enumerate(lns)]
    if "Add" in ops:
        adds = {n.output[0] for n in nodes if n.op_type == "Add"}
        relus = [n for n in nodes if n.op_type == "Relu"]
        blocks = [n for n in relus if n.input[0] in adds]
        return [("stem", relus[0].output[0])] + [
            (f"block{i + 1}", n.output[0]) for i, n in enumerate(blocks)]
    if "Conv" in ops:
        return [(f"relu{i + 1}", n.output[0])
                for i, n in enumerate(n for n in nodes if n.op_type == "Relu")]
    gemms = [n for n in nodes if n.op_type == "Gemm"]
    picks = sorted({0, 4, 9, 24, len(gemms) - 1} & set(range(len(gemms))))
    return [(f"gemm{i + 1}", gemms[i].output[0]) for i in picks]


def variances(path: Path, batch: int = MEASURE_BATCH) -> dict[str, float]:
    """Variance (over all elements) of the output and of the ``probes`` tensors, measured with
    onnxruntime on ``random_feeds`` with graph optimizations disabled."""
    import onnxruntime as ort

    model = onnx.load(str(path))
    output = model.graph.output[0].name
    labelled = probes(model)
    for _, name in labelled:
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    names = [output] + [name for _, name in labelled]
    values = session.run(names, random_feeds(model, batch))
    result = {label: float(np.var(v, dtype=np.float64))
              for (label, _), v in zip(labelled, values[1:])}
    result["output"] = float(np.var(values[0], dtype=np.float64))
    return result


def summary(path: Path) -> dict:
    model = onnx.load(str(path))
    ops = Counter(n.op_type for n in model.graph.node)
    return {
        "name": path.name,
        "bytes": path.stat().st_size,
        "nodes": len(model.graph.node),
        "ops": dict(sorted(ops.items())),
        "inputs": [(v.name, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
                   for v in model.graph.input],
        "variances": variances(path),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }


def report(paths) -> None:
    for path in paths:
        s = summary(path)
        var = s["variances"]
        ops = ", ".join(f"{k} x{v}" for k, v in s["ops"].items())
        profile = ", ".join(f"{k} {v:.3g}" for k, v in var.items() if k != "output")
        print(f"{s['name']}: {s['bytes']} bytes, {s['nodes']} nodes, inputs {s['inputs']}, "
              f"output var {var['output']:.4g}, sha256 {s['sha256'][:16]}\n"
              f"    ops: {ops}\n    var by depth: {profile}")


# --- synthetic large graph ---------------------------------------------------------------------


def build_wide_graph(path, n_nodes: int = 10_000, width: int = 32, seed: int = 0) -> onnx.ModelProto:
    """A synthetic graph of about ``n_nodes`` nodes (built with onnx.helper, no torch): a chain
    of MatMul(x, W 32x32 constant) + Add(bias) + Relu/Tanh (alternating) layers with a residual
    Add every 8 layers. Weights N(0, 1/width), biases N(0, 0.01). Input ``x`` [batch, width]."""
    if n_nodes < 3:
        raise ValueError(f"n_nodes must be at least 3 (one MatMul + Add + activation), got {n_nodes}")
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x, skip, layer = "x", "x", 0
    while len(nodes) + 3 <= n_nodes:
        w, b = f"layer{layer}.weight", f"layer{layer}.bias"
        inits.append(numpy_helper.from_array(
            (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), w))
        inits.append(numpy_helper.from_array(
            (rng.standard_normal(width) * 0.1).astype(np.float32), b))
        act = "Relu" if layer % 2 == 0 else "Tanh"
        nodes += [
            helper.make_node("MatMul", [x, w], [f"layer{layer}.mm"], name=f"layer{layer}.matmul"),
            helper.make_node("Add", [f"layer{layer}.mm", b], [f"layer{layer}.pre"],
                             name=f"layer{layer}.add"),
            helper.make_node(act, [f"layer{layer}.pre"], [f"layer{layer}.out"],
                             name=f"layer{layer}.{act.lower()}"),
        ]
        x = f"layer{layer}.out"
        layer += 1
        if layer % 8 == 0 and len(nodes) < n_nodes:
            nodes.append(helper.make_node("Add", [x, skip], [f"res{layer}.out"], name=f"res{layer}"))
            x = skip = f"res{layer}.out"
    graph = helper.make_graph(
        nodes, "synthetic_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", width])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=IR_VERSION, producer_name="onnxinit.sample_models")
    onnx.checker.check_model(model)
    if path is not None:
        onnx.save(model, str(path))
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--synthetic", metavar="PATH",
                        help="write the synthetic large graph to PATH instead of the samples")
    parser.add_argument("--nodes", type=int, default=10_000,
                        help="node count of the synthetic graph (default 10000)")
    parser.add_argument("--measure", action="store_true",
                        help="do not rebuild; print size, nodes, ops and output variance")
    args = parser.parse_args(argv)
    if args.synthetic:
        model = build_wide_graph(args.synthetic, args.nodes)
        print(f"{args.synthetic}: {len(model.graph.node)} nodes, "
              f"{Path(args.synthetic).stat().st_size} bytes")
        return 0
    paths = [HERE / f"{n}.onnx" for n in NAMES] if args.measure else build_samples(HERE)
    report(paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
