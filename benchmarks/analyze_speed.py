"""How fast is `analyze` on large graphs?

Builds (with onnx.helper, no framework) a CIFAR ResNet-164 (bottleneck blocks, BatchNormalization,
about 500 parametric layers) and a 10,000-node chain, then times load + propagation against a
reference measured in the same run: creating an onnxruntime session for the same model and
running one forward pass at batch 1. Prints absolute seconds for context and the ratio.

    python benchmarks/analyze_speed.py
"""

from __future__ import annotations

import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxinit
from onnxinit.runtime import make_session


def _conv_bn(nodes, inits, rng, x, c_in, c_out, k, stride, name):
    w = (rng.standard_normal((c_out, c_in, k, k)) * np.sqrt(2 / (c_in * k * k))).astype(np.float32)
    inits.append(numpy_helper.from_array(w, f"{name}.w"))
    for p, v in (("g", 1.0), ("b", 0.0), ("m", 0.0), ("v", 1.0)):
        inits.append(numpy_helper.from_array(np.full(c_out, v, np.float32), f"{name}.{p}"))
    pad = k // 2
    nodes.append(helper.make_node("Conv", [x, f"{name}.w"], [f"{name}.c"], name=name,
                                  strides=[stride, stride], pads=[pad] * 4))
    nodes.append(helper.make_node("BatchNormalization",
                                  [f"{name}.c", f"{name}.g", f"{name}.b", f"{name}.m", f"{name}.v"],
                                  [f"{name}.bn"], name=f"{name}.bn"))
    return f"{name}.bn"


def resnet164() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    x = _conv_bn(nodes, inits, rng, "x", 3, 16, 3, 1, "stem")
    nodes.append(helper.make_node("Relu", [x], ["stem.r"]))
    x, c_in = "stem.r", 16
    for stage, width in enumerate((16, 32, 64)):
        for block in range(18):
            stride = 2 if stage > 0 and block == 0 else 1
            name = f"s{stage}b{block}"
            h = _conv_bn(nodes, inits, rng, x, c_in, width, 1, 1, f"{name}.1")
            nodes.append(helper.make_node("Relu", [h], [f"{name}.r1"]))
            h = _conv_bn(nodes, inits, rng, f"{name}.r1", width, width, 3, stride, f"{name}.2")
            nodes.append(helper.make_node("Relu", [h], [f"{name}.r2"]))
            h = _conv_bn(nodes, inits, rng, f"{name}.r2", width, 4 * width, 1, 1, f"{name}.3")
            skip = x
            if stride != 1 or c_in != 4 * width:
                skip = _conv_bn(nodes, inits, rng, x, c_in, 4 * width, 1, stride, f"{name}.proj")
            nodes.append(helper.make_node("Add", [h, skip], [f"{name}.add"]))
            nodes.append(helper.make_node("Relu", [f"{name}.add"], [f"{name}.out"]))
            x, c_in = f"{name}.out", 4 * width
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
    inits.append(numpy_helper.from_array(
        (rng.standard_normal((10, c_in)) / np.sqrt(c_in)).astype(np.float32), "fc.w"))
    nodes.append(helper.make_node("Gemm", ["flat", "fc.w"], ["y"], transB=1, name="fc"))
    graph = helper.make_graph(
        nodes, "resnet164",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def chain(n_nodes: int = 10_000, width: int = 32) -> onnx.ModelProto:
    """MatMul + Add + Tanh/Relu triples, with a residual Add every 4 layers."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    x, i, skip = "x", 0, "x"
    while len(nodes) < n_nodes:
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"),
                  numpy_helper.from_array(np.zeros(width, np.float32), f"b{i}")]
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
                  helper.make_node("Tanh" if i % 2 else "Relu", [f"a{i}"], [f"h{i}"])]
        x = f"h{i}"
        if i % 4 == 3:
            nodes.append(helper.make_node("Add", [x, skip], [f"r{i}"]))
            x = skip = f"r{i}"
        i += 1
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", width])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _best_of(fn, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        for name, model, shape in (("resnet164", resnet164(), (1, 3, 32, 32)),
                                   ("chain10k", chain(), (1, 32))):
            path = Path(tmp) / f"{name}.onnx"
            onnx.save(model, path)
            params = sum(1 for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul"))
            analyze_s = _best_of(lambda path=path: onnxinit.analyze(path, batch_size=1))
            feeds = {"x": np.zeros(shape, np.float32)}

            def reference(path=path, feeds=feeds):
                make_session(str(path), device="cpu").run(None, feeds)

            reference_s = _best_of(reference)
            print(f"{name:10} nodes {len(model.graph.node):6}  parametric {params:4}  "
                  f"analyze (load+propagate) {analyze_s:6.2f} s  "
                  f"onnxruntime session+forward {reference_s:6.2f} s  "
                  f"ratio {analyze_s / reference_s:5.2f}x")


if __name__ == "__main__":
    main()
