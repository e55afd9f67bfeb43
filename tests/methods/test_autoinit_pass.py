"""autoinit as one topological pass: every node's rule runs once, the pass's moments are a
prediction of the rescaled model (equal to a fresh analysis of the file rescale writes), and a
weight tied to a node propagated earlier makes rescale propagate the result again."""

from __future__ import annotations

import dataclasses
import importlib

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit import propagate as propagate_module
from onnxinit.analysis import analyze
from onnxinit.graph import load
from onnxinit.methods import autoinit
from onnxinit.moments import Moments
from onnxinit.propagate import propagate_node, start_propagation
from onnxinit.rescale import rescale
from tests.samples import sample


def _output_vars(analysis) -> dict[str, float]:
    outputs = set(analysis.graph.output_names)
    return {t.name: t.var for t in analysis.tensors if t.name in outputs}


@pytest.mark.parametrize("name", ["small_cnn", "resnet20_nobn", "transformer_postln"])
def test_after_is_a_fresh_analysis_of_the_written_file(name, tmp_path):
    out = tmp_path / "out.onnx"
    result = rescale(sample(name), "autoinit", output=out)
    fresh = _output_vars(analyze(out))
    assert set(result.outputs_var_after) == set(fresh)
    for tensor, var in fresh.items():
        assert result.outputs_var_after[tensor] == pytest.approx(var, rel=1e-6), tensor


def test_every_rule_runs_once(monkeypatch):
    graph = load(sample("resnet20_nobn"))
    calls = []

    def counting(graph, node_id, result):
        calls.append(node_id)
        return propagate_node(graph, node_id, result)

    monkeypatch.setattr(autoinit, "propagate_node", counting)
    plan = autoinit.plan(graph)
    nodes = [n for n in graph.order if not graph.is_shape_node(n)]
    assert sorted(calls) == sorted(nodes)
    assert plan.prediction is not None
    assert len(plan.scales()) == len(graph.parametric_nodes)


def test_the_pass_makes_one_view_whatever_the_depth(monkeypatch):
    # a view per layer copied the tables of every change before it: quadratic in depth
    from onnxinit.graph import ModelGraph

    graph = load(sample("resnet20_nobn"))
    views = []
    make_view = ModelGraph._view
    monkeypatch.setattr(ModelGraph, "_view", lambda self, names: views.append(1) or make_view(
        self, names))
    plan = autoinit.plan(graph)
    assert len(plan.scales()) == len(graph.parametric_nodes) > 10
    assert len(views) == 1


def _deep_equal(a, b, path="moments"):
    """Every field of two Moments (recursively, arrays to 1e-12), so that a field added to
    Moments later and not scaled by Moments.scaled fails here."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-300, err_msg=path)
    elif dataclasses.is_dataclass(a):
        assert type(a) is type(b), path
        for f in dataclasses.fields(a):
            if f.compare or isinstance(getattr(a, f.name), (np.ndarray, Moments)):
                _deep_equal(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _deep_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b or (callable(a) and callable(b)), path


@pytest.mark.parametrize("name", ["small_cnn", "resnet20_nobn", "transformer_postln"])
def test_scaled_moments_are_the_rule_on_the_scaled_weight(name):
    """Moments.scaled(s) of a weighted node's outputs (bias zero) equals running its rule with
    the weight times s: the identity autoinit's single pass relies on. (s a power of two, so
    the scaled float32 weight is exact and any difference is the rule's, not rounding.)"""
    graph = load(sample(name))
    biases = {layer.bias for layer in graph.layers if layer.bias is not None}
    zeroed = graph.with_values({b: np.zeros_like(graph.value(b)) for b in biases})
    result = start_propagation(zeroed)
    for node_id in zeroed.order:
        if not zeroed.is_shape_node(node_id):
            propagate_node(zeroed, node_id, result)
    for layer in graph.layers[:: max(1, len(graph.layers) // 6)]:
        out = graph.node(layer.node).output[0]
        scaled = zeroed.with_values({layer.weight: zeroed.value(layer.weight) * 0.25})
        propagate_node(scaled, layer.node, result)
        by_rule = result.moments[out]
        propagate_node(zeroed, layer.node, result)
        _deep_equal(result.moments[out].scaled(0.25), by_rule, f"{name}:{layer.node}")


def _tied_model() -> helper.ModelProto:
    """An embedding read by Gather, then the same table as the output projection (tied
    weights, as language models write them): autoinit scales the table at the projection,
    after the Gather was propagated."""
    rng = np.random.default_rng(0)
    table = rng.standard_normal((50, 16)).astype(np.float32)
    w = (rng.standard_normal((16, 16)) * 0.1).astype(np.float32)
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"], name="embed"),
             helper.make_node("MatMul", ["e", "w"], ["h"], name="mix"),
             helper.make_node("Tanh", ["h"], ["t"], name="tanh"),
             helper.make_node("Add", ["t", "e"], ["r"], name="residual"),
             helper.make_node("Transpose", ["emb"], ["emb_t"], name="tie", perm=[1, 0]),
             helper.make_node("MatMul", ["r", "emb_t"], ["logits"], name="head")]
    graph = helper.make_graph(
        nodes, "tied", [helper.make_tensor_value_info("ids", TensorProto.INT64, [4, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [4, 8, 50])],
        [numpy_helper.from_array(table, "emb"), numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_a_weight_tied_to_an_earlier_node_is_propagated_again(tmp_path, monkeypatch):
    model = _tied_model()
    plan = autoinit.plan(load(model))
    assert "emb" in plan.changes and plan.prediction is None  # the Gather read it first
    calls = []
    real = propagate_module.propagate
    rescale_module = importlib.import_module("onnxinit.rescale")  # the module, not the function
    monkeypatch.setattr(rescale_module, "propagate",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    out = tmp_path / "tied.onnx"
    result = rescale(model, "autoinit", output=out)
    assert len(calls) == 1  # after (the pass's moments are not the result's)
    assert result.outputs_var_before and len(calls) == 2  # before: made when first read
    fresh = _output_vars(analyze(out))
    assert result.outputs_var_after["logits"] == pytest.approx(fresh["logits"], rel=1e-6)


def _layers_with_kept_bias(graph) -> list[str]:
    """Layers whose own node adds a bias: with --keep-bias, y = s W x + b is not linear in s
    and autoinit tries three scales of the weight."""
    return [layer.node for layer in graph.layers
            if layer.bias is not None and layer.bias_node is None]


@pytest.mark.parametrize("name", ["small_cnn", "resnet20_nobn", "transformer_postln"])
def test_keep_bias_makes_one_view_and_a_constant_work_per_layer(name, monkeypatch):
    # a view per try (three per layer) copied the tables of every change before it
    from onnxinit.graph import ModelGraph

    graph = load(sample(name))
    views, calls = [], []
    make_view = ModelGraph._view
    monkeypatch.setattr(ModelGraph, "_view", lambda self, names: views.append(1) or make_view(
        self, names))

    def counting(graph, node_id, result):
        calls.append(node_id)
        return propagate_node(graph, node_id, result)

    monkeypatch.setattr(autoinit, "propagate_node", counting)
    plan = autoinit.plan(graph, autoinit.AutoInitOptions(keep_bias=True))
    kept = _layers_with_kept_bias(graph)
    nodes = [n for n in graph.order if not graph.is_shape_node(n)]
    assert kept and len(views) == 1
    # each node once; a layer with a kept bias two more tries (scales -1 and 0: scale 1 is
    # its first run) and once more at its chosen scale
    assert len(calls) == len(nodes) + 3 * len(kept)
    assert len(plan.scales()) == len(graph.parametric_nodes)


def _variance_by_view(graph, node_id, result, weight, s):
    """The try as autoinit made it before ModelGraph.trying: a new view per try."""
    propagate_node(graph.with_changes({weight: autoinit.Change(scale=s)}), node_id, result)
    return result.moments[graph.node(node_id).output[0]].total()[1]


@pytest.mark.parametrize("name", ["small_cnn", "resnet20_nobn", "transformer_postln"])
def test_keep_bias_plan_equals_the_plan_made_with_a_view_per_try(name, monkeypatch):
    """The tries on the pass's own view (undone after each) give the plan that a fresh view
    per try gave: the same scales, layer reports and predicted moments, bit for bit."""
    options = autoinit.AutoInitOptions(keep_bias=True)
    ours = autoinit.plan(load(sample(name)), options)
    monkeypatch.setattr(autoinit, "_variance_at", _variance_by_view)
    theirs = autoinit.plan(load(sample(name)), options)
    assert ours.scales() == theirs.scales()
    assert ours.report == theirs.report
    assert {k: c.target for k, c in ours.changes.items()} == {
        k: c.target for k, c in theirs.changes.items()}
    assert ours.prediction is not None and theirs.prediction is not None
    for tensor, m in theirs.prediction.moments.items():
        got = ours.prediction.moments[tensor]
        np.testing.assert_array_equal(got.mean, m.mean, err_msg=tensor)
        np.testing.assert_array_equal(got.var, m.var, err_msg=tensor)


def test_a_try_leaves_the_view_as_it_was():
    graph = load(sample("small_cnn"))
    view = graph.with_changes({})
    layer = next(layer for layer in graph.layers if layer.bias is not None)
    before = view.value(layer.weight).copy()
    with view.trying({layer.weight: autoinit.Change(scale=-1.0)}):
        np.testing.assert_array_equal(view.value(layer.weight), -before)
    np.testing.assert_array_equal(view.value(layer.weight), before)
    view.take_changes({layer.weight: autoinit.Change(scale=2.0)})
    with view.trying({layer.weight: autoinit.Change(scale=0.5)}):  # after the view's own
        np.testing.assert_array_equal(view.value(layer.weight), before)
    np.testing.assert_array_equal(view.value(layer.weight), 2 * before)
    with pytest.raises(ValueError):
        with graph.trying({layer.weight: autoinit.Change(scale=2.0)}):
            pass
