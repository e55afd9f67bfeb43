"""The report lists the tensors of the user's file, with the node and op that write each there
(``ModelGraph.user_tensors``): the preparation passes add tensors of their own
(``prepared/...``: a repeat read as a nearest Resize, a crop moved onto the NCHW map) and write
some of the user's with other ops (a channels-last Reshape as a Transpose). Before, the report
listed those added tensors, named the prepared graph's nodes and ops, and findings could point at
a tensor the file does not have. The oracle is the file itself: its nodes' outputs and op types,
and onnxruntime's measurement of every one of them."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import helper

import onnxinit
from onnxinit.graph import load

from .test_nearest_repeats import N, _model


def _file_tensors(model) -> dict[str, tuple[str, str]]:
    out = {}
    for i, node in enumerate(model.graph.node):
        for name in node.output:
            out[name] = (node.name or f"{node.op_type}_{i}", node.op_type)
    return out


def test_report_lists_the_files_tensors_with_the_files_ops():
    model = _model()
    graph = load(model, batch_size=N)
    prepared = {o for n in graph.order for o in graph.node(n).output}
    assert prepared - set(_file_tensors(model)), "the passes added no tensor: nothing is tested"
    analysis = onnxinit.analyze(model, batch_size=N)
    file_tensors = _file_tensors(model)
    reported = {t.name: t for t in analysis.tensors}
    assert set(reported) == set(file_tensors) | {"x"}
    for name, (node, op) in file_tensors.items():
        assert (reported[name].node, reported[name].op) == (node, op), name
    assert reported["up"].op == "Reshape"  # written as a Transpose of a Resize in the analysis


def test_every_listed_tensor_is_measured_by_onnxruntime():
    model = _model()
    tensors = list(_file_tensors(model))
    outputs = {o.name for o in model.graph.output}
    model.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in tensors
                              if t not in outputs)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((N, 3, 6, 6)).astype(np.float32)
    names = [o.name for o in session.get_outputs()]
    measured = dict(zip(names, session.run(names, {"x": x})))
    analysis = onnxinit.analyze(_model(), batch_size=N)
    for t in analysis.tensors[1:]:
        assert t.name in measured
        assert abs(t.var / measured[t.name].var() - 1) < 0.1, (t.name, t.var,
                                                                measured[t.name].var())
