"""The weights of ONNX recurrent ops (LSTM, GRU, RNN) found among a framework's parameters.

ONNX stacks a recurrent layer's gates in its own order, one slice per direction: ``W [D, G*H,
in]``, ``R [D, G*H, H]``, ``B [D, 2*G*H]`` (input biases, then recurrent ones), LSTM gates
``i, o, f, c``, GRU ``z, r, h``. Frameworks keep one kernel per direction (a Keras
``Bidirectional`` layer two layers) with the gates in their order: Keras LSTM ``i, f, c, o`` as
``[in, 4H]``, GRU ``z, r, h`` with ``reset_after`` biases ``[2, 3H]``; PyTorch LSTM ``i, f, g,
o`` as ``[4H, in]``, GRU ``r, z, n``, biases ``bias_ih``/``bias_hh``. :func:`framework_views`
lists every such view of one tensor; the mapper (:func:`recurrent_weights`) records the
parameters a tensor's views equal exactly. The methods leave these weights as initialised, so
nothing is loaded from them: they identify the layers (and a rescale that changed one is
refused, :func:`onnxinit.weights.load.load_plan`)."""

from __future__ import annotations

import numpy as np

from .values import equal, is_degenerate, value_key

ONNX_GATES = {"LSTM": "iofc", "GRU": "zrh", "RNN": "h"}
FRAMEWORK_GATES = {"LSTM": ("ifco",), "GRU": ("zrh", "rzh"), "RNN": ("h",)}
ROLES = {1: "W", 2: "R", 3: "B"}


def regated(rows: np.ndarray, source: str, target: str) -> np.ndarray:
    """``rows`` (gate blocks of equal size along axis 0, in ``source`` order) in ``target``
    order."""
    size = rows.shape[0] // len(source)
    return np.concatenate([rows[source.index(g) * size:(source.index(g) + 1) * size]
                           for g in target])


def framework_views(op: str, role: str, value: np.ndarray) -> list[np.ndarray]:
    """Every per-direction view of an ONNX recurrent tensor (``role`` W, R or B of ``op``) in
    a framework's gate order: kernels as they are and transposed; biases input, recurrent,
    and both stacked (Keras' ``reset_after`` GRU)."""
    onnx_gates = ONNX_GATES[op]
    views = []
    for direction in np.asarray(value):
        for gates in FRAMEWORK_GATES[op]:
            if role == "B":
                half = direction.shape[0] // 2
                wb, rb = (regated(direction[:half], onnx_gates, gates),
                          regated(direction[half:], onnx_gates, gates))
                views += [wb, rb, np.stack([wb, rb])]
            else:
                kernel = regated(direction, onnx_gates, gates)
                views += [kernel, kernel.T]
    return views


def recurrent_weights(mapper) -> None:
    """Record in ``mapper.report.recurrent`` the parameters that views of each recurrent op's
    W, R and B equal (tensors whose values are all equal, zero biases, identify nothing)."""
    model = mapper.model
    if model is None:
        return
    index = mapper.value_index()
    remaining = set(mapper._remaining())
    for node in model.graph.node:
        if node.op_type not in ONNX_GATES or node.domain not in ("", "ai.onnx"):
            continue
        for position, role in ROLES.items():
            name = node.input[position] if len(node.input) > position else ""
            if name not in remaining or name not in mapper.ref:
                continue
            found = []
            for view in framework_views(node.op_type, role, mapper.ref[name]):
                if not is_degenerate(view):
                    found += [p for p in index.get(value_key(view), [])
                              if p not in found and equal(view, mapper.params[p])]
            if found:
                mapper.report.recurrent[name] = found
                mapper.report.how[name] = f"value ({node.op_type} {role}, per direction)"
