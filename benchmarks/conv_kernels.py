"""One 3x3 convolution (stride 1, pad 1, no bias) of the ResNet twin's stages, CPU seconds per
call on one thread: onnxruntime's Conv and ConvTranspose with the weight as a graph input (as in
every gradient program: the methods feed theta), the same two on onnxruntime's blocked kernels
with the input weight reordered in the graph (onnxinit/autodiff/blocked.py), the same two as
GradInit's and MetaInit's scaled programs run them (onnxinit/autodiff/scaled.py: ``s Conv(x,
W0)`` and the input gradient as ``s Conv(dy, flip(W0)^T)``, W0 a constant), onnxinit's gradient
program of the convolution alone (forward, then dX and dW), against torch's forward and forward
+ backward. It says where the gradient methods' time on convolutional networks goes
(docs/methods.md, "Cost per iteration").

    python benchmarks/conv_kernels.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = [(32, 16, 16), (32, 32, 8), (32, 64, 4)]  # (batch, channels, side) per stage


def seconds(call, repeats: int = 5, calls: int = 20) -> float:
    """The least CPU time per call over ``repeats`` runs of ``calls`` calls (a loaded machine
    only adds to it)."""
    call()
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(calls):
            call()
        best = min(best, (time.process_time() - start) / calls)
    return best


def one_op(op: str, x_shape, w_shape):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node(op, ["x", "w"], ["y"], pads=[1] * 4)], "one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape)),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, list(w_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def session(op: str, x_shape, w_shape):
    from onnxinit.runtime import make_session

    return make_session(one_op(op, x_shape, w_shape), device="cpu", threads=1)


def scaled_session(op: str, x_shape, w):
    """``session(op, ...)`` rewritten by :func:`onnxinit.autodiff.scaled.rewrite`: the weight a
    constant W0, the scale a scalar input (a ConvTranspose becomes a Conv)."""
    from onnxinit.autodiff.scaled import rewrite
    from onnxinit.runtime import make_session

    return make_session(rewrite(one_op(op, x_shape, w.shape), {"w": w}), device="cpu",
                        threads=1)


def blocked_session(op: str, x_shape, w_shape):
    """``session(op, ...)`` rewritten by :func:`onnxinit.autodiff.blocked.rewrite`: the weight
    still an input, reordered in the graph for onnxruntime's NCHWc kernels."""
    from onnxinit.autodiff.blocked import rewrite
    from onnxinit.runtime import make_session

    return make_session(rewrite(one_op(op, x_shape, w_shape)), device="cpu", threads=1)


def gradient_program(x_shape, w):
    """Gradients of sum(conv(x, w) * G) for x (a graph input) and w: dX and dW, one pass."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxinit.autodiff import GradientProgram

    g = np.random.default_rng(1).standard_normal(x_shape[:1] + (w.shape[0],) + x_shape[2:])
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1] * 4),
             helper.make_node("Mul", ["y", "G"], ["z"]),
             helper.make_node("ReduceSum", ["z"], ["loss"], keepdims=0)]
    graph = helper.make_graph(
        nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(g.astype(np.float32), "G")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return GradientProgram(model, {"x": x_shape}, loss="output", wrt=["w"], threads=1)


def main() -> None:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    print("| batch, channels, side | ORT Conv | ORT ConvTranspose (dX) | blocked Conv | blocked dX "
          "| scaled Conv | scaled dX | onnxinit fwd + dW | torch conv2d | torch fwd + dW "
          "| torch fwd + dX + dW |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n, c, side in SHAPES:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, c, side, side)).astype(np.float32)
        w = (rng.standard_normal((c, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
        conv, transpose = session("Conv", x.shape, w.shape), session("ConvTranspose", x.shape,
                                                                       w.shape)
        blocked_conv = blocked_session("Conv", x.shape, w.shape)
        blocked_transpose = blocked_session("ConvTranspose", x.shape, w.shape)
        scaled_conv = scaled_session("Conv", x.shape, w)
        scaled_transpose = scaled_session("ConvTranspose", x.shape, w)
        scale = {"w::scale": np.array(1.0, dtype=np.float32)}
        program = gradient_program(x.shape, w)
        xt, wt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(w).requires_grad_()
        gt = torch.randn(n, c, side, side)

        def forward():
            with torch.no_grad():
                F.conv2d(xt, wt, padding=1)

        def weight_gradient():
            torch.autograd.grad(F.conv2d(xt, wt, padding=1), [wt], gt)

        def both():
            torch.autograd.grad(F.conv2d(xt, wt, padding=1), [xt, wt], gt)

        row = [seconds(lambda: conv.run(None, {"x": x, "w": w})),
               seconds(lambda: transpose.run(None, {"x": x, "w": w})),
               seconds(lambda: blocked_conv.run(None, {"x": x, "w": w})),
               seconds(lambda: blocked_transpose.run(None, {"x": x, "w": w})),
               seconds(lambda: scaled_conv.run(None, {"x": x, "w": w, **scale})),
               seconds(lambda: scaled_transpose.run(None, {"x": x, "w": w, **scale})),
               seconds(lambda: program.gradients({"x": x})),
               seconds(forward), seconds(weight_gradient), seconds(both)]
        print(f"| {n}, {c}, {side} | " + " | ".join(f"{1000 * s:.2f} ms" for s in row) + " |")


if __name__ == "__main__":
    main()
