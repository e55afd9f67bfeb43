"""The empirical fallback (``onnxinit.rules.empirical``): reproducible given the seed when the
node runs a random op (stochastic depth as torchvision exports it), and right on the moments."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SHAPE = (8, 16, 6, 6)
SURVIVAL = 0.8


def stochastic_depth_model(threshold: str = "p") -> onnx.ModelProto:
    """``x * (Less(RandomUniformLike(ConstantOfShape([N, 1, 1, 1])), p) / p)`` with N read from
    x's shape, as ``torchvision.ops.stochastic_depth`` exports in training mode, after a Relu
    (so that the signal is not centred). ``threshold="r"`` draws U like r and compares it with
    r instead of the constant p: no rule knows that mask (rules/random_draws.py knows the
    constant one), so the fallback measures it, running the random op."""
    ints = lambda name, v: numpy_helper.from_array(np.array(v, dtype=np.int64), name)  # noqa: E731
    floats = lambda name, v: numpy_helper.from_array(np.array(v, dtype=np.float32), name)  # noqa: E731
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Shape", ["r"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
        helper.make_node("Concat", ["n1", "ones3"], ["size"], axis=0),
        helper.make_node("ConstantOfShape", ["size"], ["empty"],
                         value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0])),
        helper.make_node("RandomUniformLike", ["empty" if threshold == "p" else "r"], ["u"],
                         dtype=1, low=0.0, high=1.0),
        helper.make_node("Less", ["u", threshold], ["keep"]),
        helper.make_node("Cast", ["keep"], ["keep_f"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["keep_f", "p"], ["mask"]),
        helper.make_node("Mul", ["r", "mask"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "stochastic_depth",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(SHAPE))],
        [ints("zero", 0), ints("axes0", [0]), ints("ones3", [1, 1, 1]), floats("p", SURVIVAL)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


_ANALYZE = """
import json, sys, onnxinit
a = onnxinit.analyze(sys.argv[1], batch_size=8, seed=int(sys.argv[2]))
json.dump({t.name: [t.mean, t.var] for t in a.tensors}, sys.stdout)
"""


def _analyze_in_fresh_process(path: Path, seed: int) -> dict:
    # a fresh process each time: onnxruntime seeds an unseeded random op from the clock once per
    # process, so two analyses in one process agree even without a seed
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", _ANALYZE, str(path), str(seed)], cwd=root,
                         capture_output=True, text=True, timeout=300, check=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(root)})
    return json.loads(out.stdout)


def test_stochastic_depth_is_reproducible_and_exact(tmp_path):
    path = tmp_path / "stochastic_depth.onnx"
    onnx.save(stochastic_depth_model(), path)
    first = _analyze_in_fresh_process(path, seed=0)
    second = _analyze_in_fresh_process(path, seed=0)
    assert first == second  # every number, bit for bit
    # against the exact moments: r = relu(z), z ~ N(0, 1); the mask is 1/p with probability p,
    # else 0, independent of r: E[y] = E[r] = 1/sqrt(2 pi), E[y^2] = E[r^2]/p = 1/(2p)
    mean, var = first["y"]
    exact_mean = 1.0 / np.sqrt(2.0 * np.pi)
    exact_var = 0.5 / SURVIVAL - exact_mean**2
    assert abs(mean - exact_mean) < 0.03 * exact_mean
    assert abs(var - exact_var) < 0.05 * exact_var


def test_a_random_mask_the_rules_do_not_know_is_measured_reproducibly(tmp_path):
    from onnxinit.graph import load
    from onnxinit.propagate import propagate

    model = stochastic_depth_model(threshold="r")
    assert propagate(load(model)).rules["keep_f"] == "empirical"
    path = tmp_path / "random_threshold.onnx"
    onnx.save(model, path)
    first = _analyze_in_fresh_process(path, seed=0)
    assert first == _analyze_in_fresh_process(path, seed=0)  # the fallback's draws are seeded
    # the mask is 1 where U < r: E[keep] = E[r] for r in [0, 1)... r = relu(z) reaches above 1,
    # so E[keep] = E[min(r, 1)] = E[r] - E[(r - 1)+] = phi(0) - (phi(1) - Phi(-1))
    from scipy.stats import norm
    want = norm.pdf(0) - (norm.pdf(1) - norm.cdf(-1))
    assert abs(first["keep_f"][0] - want) < 0.02
