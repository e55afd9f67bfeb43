"""Scatters by constant indices (``rules/scatter.py``) against onnxruntime: a recurrence
written step by step into a zero tensor with ScatterND (RecurrentGemma's scan as the
TorchScript exporter writes it), each step and an unwritten one gathered back, and a
ScatterElements into a signal."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.models import make_model
from tests.real.compare import predicted_and_measured

N, S, D = 16, 6, 24  # batch, steps, features


def _value(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _const(name, array, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(array, dtype=dtype), name)


def _scan_written_by_steps():
    """h_t = 0.9 h_{t-1} + x_t W (so the steps' variances grow), each h_t written into
    ``zeros[N, S, D]`` at ``[b, t]`` for every sample b by its own ScatterND; after each write
    the step just written and the next (still 0) are gathered back; the last tensor is
    projected by a MatMul. Returns the model and the tensors to compare."""
    rng = np.random.default_rng(0)
    inits = [_const("w", rng.standard_normal((D, D)) / np.sqrt(D)), _const("decay", 0.9),
             _const("zeros", np.zeros((N, S, D))), _const("proj", rng.standard_normal((D, D)))]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["u"])]
    compared, written, state = ["u"], "zeros", None
    for t in range(S):
        step = f"t{t}"
        inits += [_const(step, t, np.int64),
                  _const(f"at{t}", [[[b, t]] for b in range(N)], np.int64),
                  _const(f"next{t}", (t + 1) % S, np.int64)]
        nodes.append(helper.make_node("Gather", ["u", step], [f"u_{t}"], axis=1))
        if state is None:
            nodes.append(helper.make_node("Identity", [f"u_{t}"], [f"h_{t}"]))
        else:
            nodes += [helper.make_node("Mul", [state, "decay"], [f"kept_{t}"]),
                      helper.make_node("Add", [f"kept_{t}", f"u_{t}"], [f"h_{t}"])]
        state = f"h_{t}"
        nodes += [helper.make_node("Unsqueeze", [state, "one"], [f"update_{t}"]),
                  helper.make_node("ScatterND", [written, f"at{t}", f"update_{t}"],
                                   [f"written_{t}"]),
                  helper.make_node("Gather", [f"written_{t}", step], [f"read_{t}"], axis=1)]
        written = f"written_{t}"
        compared += [f"written_{t}", f"read_{t}"]
        if t + 1 < S:
            nodes.append(helper.make_node("Gather", [written, f"next{t}"], [f"unwritten_{t}"],
                                          axis=1))
    inits.append(_const("one", [1], np.int64))
    nodes.append(helper.make_node("MatMul", [written, "proj"], ["out"]))
    compared.append("out")
    model = make_model(nodes, [_value("x", (N, S, D))], [_value("out", (N, S, D))], inits,
                       opset=17)
    return model, compared


def test_steps_written_one_by_one_keep_their_own_statistics():
    """Each written step keeps its variance (growing as 1, 1.81, 2.47 ... times x W's), each
    unwritten step is exactly 0, and the tensor's variance counts the zeros and the steps'
    different variances. Before, the fallback pooled every ScatterND's moments over the
    tensor, so step t read the average of all steps (0.17x at the first, in this model) and
    the unwritten steps read nonzero variances."""
    model, names = _scan_written_by_steps()
    predicted, measured = predicted_and_measured(model, names, N, runs=16)
    for name in names:
        assert predicted[name].var == pytest.approx(measured[name][1], rel=0.1), name
    for t in range(S - 1):
        assert predicted[f"unwritten_{t}"].var == 0.0
        assert predicted[f"unwritten_{t}"].mean == 0.0


def test_scatter_elements_writes_columns_of_another_law():
    """``y = x`` with columns 1 and 4 of every row replaced by ``2 z`` (ScatterElements along
    axis 1): those columns have z's law times 4, the others x's; a Gather of each column and
    the whole tensor's variance against onnxruntime."""
    rows, cols = 32, 6
    indices = np.tile(np.array([[1, 4]], np.int64), (rows, 1))
    inits = [_const("idx", indices, np.int64), _const("two", 2.0), _const("col1", 1, np.int64),
             _const("col2", 2, np.int64), _const("shift", 3.0)]
    nodes = [helper.make_node("Add", ["x", "shift"], ["data"]),
             helper.make_node("Mul", ["z", "two"], ["updates"]),
             helper.make_node("ScatterElements", ["data", "idx", "updates"], ["y"], axis=1),
             helper.make_node("Gather", ["y", "col1"], ["written"], axis=1),
             helper.make_node("Gather", ["y", "col2"], ["kept"], axis=1)]
    model = make_model(nodes, [_value("x", (rows, cols)), _value("z", (rows, 2))],
                       [_value("y", (rows, cols))], inits, opset=17)
    names = ["y", "written", "kept"]
    predicted, measured = predicted_and_measured(model, names, rows, runs=16)
    for name in names:
        p, (m_mean, m_var) = predicted[name], measured[name]
        assert p.var == pytest.approx(m_var, rel=0.1), name
        assert p.mean == pytest.approx(m_mean, abs=0.1 * np.sqrt(m_var)), name
    assert predicted["written"].mean == 0.0 and predicted["kept"].mean == 3.0
