"""Running an onnxinit method and its PyTorch reference from the same weights and batches, and
comparing the scale trajectories.

Precision per twin: float64 on both sides where onnxruntime runs the float64 graph (the MLP and
the transformer). The ResNet runs in float32 on both sides: onnxruntime has no float64 Conv, and
onnx's reference evaluator, onnxinit's float64 fallback, takes minutes for 20 iterations of a
20-layer network; in float32 the two sides agree to about 5e-7, far inside the 1e-3 tolerance.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from onnxinit.graph import load
from onnxinit.methods import METHODS, make_options
from onnxinit.methods._data import batches

from .twins import TWINS

PRECISION = {"tanh_mlp": "float64", "transformer": "float64", "resnet20_maxpool": "float32"}
TOLERANCE = 1e-3
ITERATIONS = 20


def slow(value):
    """A parametrize value marked slow (CI still runs it)."""
    return pytest.param(value, marks=pytest.mark.slow)


@contextlib.contextmanager
def torch_threads(count: int = 1):
    """torch on ``count`` threads (on a busy machine more threads only spin), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def onnxinit_trajectory(method: str, twin, observe=None, **options):
    """(tensor names, scales after every iteration, plan, the DataSource its batches come
    from) of onnxinit's ``method`` on ``twin``; seed 0 and no held-out checks unless given (the
    papers keep the last iteration's scales). ``observe(t)`` is called after every iteration."""
    graph = load(twin.model, batch_size=twin.batch_size)
    plan_fn, _ = METHODS[method]
    values = make_options(method, {"seed": 0, "held_out_batches": 0, **options})
    history = []

    def record(t, alpha):
        history.append(np.array(alpha))
        if observe is not None:
            observe(t)

    plan = plan_fn(graph, values, observe=record)
    return list(plan.report["scales"]), history, plan, batches(graph, values)


def max_relative_difference(names_a, history_a, names_b, history_b) -> tuple[float, int]:
    """max over iterations and tensors of |a - b| / |b| (tensors matched by name), and the
    number of iterations compared."""
    assert set(names_a) == set(names_b), set(names_a) ^ set(names_b)
    order = [list(names_b).index(n) for n in names_a]
    worst = 0.0
    for a, b in zip(history_a, history_b):
        b = np.asarray(b)[order]
        worst = max(worst, float(np.max(np.abs(a - b) / np.abs(b))))
    return worst, min(len(history_a), len(history_b))


def compare(method: str, twin_name: str, reference, options: dict, reference_options: dict):
    """Run both sides on the twin for ITERATIONS iterations; (max relative difference,
    iterations compared, onnxinit's plan, the reference's per-iteration records)."""
    twin = TWINS[twin_name]()
    precision = PRECISION[twin_name]
    names, history, plan, source = onnxinit_trajectory(method, twin, precision=precision,
                                                       **options)
    dtype = torch.float64 if precision == "float64" else torch.float32
    with torch_threads():
        ref_history, records, ref_names = reference(twin, source, iterations=ITERATIONS,
                                                    dtype=dtype, **reference_options)
    ref_names = ref_names if isinstance(ref_names, list) else ref_names.names
    difference, compared = max_relative_difference(names, history, ref_names, ref_history)
    return difference, compared, plan, records
