from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.errors import InvalidOptionError
from onnxinit.graph import load

from .models import make_model, mlp


def _exporter_like_model():
    """Conv -> Shape/Gather/Unsqueeze/Concat -> Reshape -> MatMul with a transposed weight."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "conv.weight"),
        numpy_helper.from_array(rng.standard_normal((8, 1, 3, 3)).astype(np.float32), "dw.weight"),
        numpy_helper.from_array(rng.standard_normal((10, 8 * 6 * 6)).astype(np.float32), "fc.weight"),
        numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "axes"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "minus_one"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv.weight"], ["c"], name="conv"),
        helper.make_node("Conv", ["c", "dw.weight"], ["d"], group=8, pads=[1, 1, 1, 1], name="dw"),
        helper.make_node("Shape", ["d"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"]),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus_one"], ["shape"], axis=0),
        helper.make_node("Reshape", ["d", "shape"], ["flat"]),
        helper.make_node("Transpose", ["fc.weight"], ["fc.weight_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["flat", "fc.weight_t"], ["y"], name="fc"),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )


def test_shape_subgraph_is_constant_and_not_signal():
    graph = load(_exporter_like_model(), batch_size=5)
    assert graph.shape("flat") == (5, 288)
    for tensor in ("s", "n", "n1", "shape", "fc.weight_t"):
        assert graph.is_constant(tensor) and not graph.is_signal(tensor)
    assert graph.value("shape").tolist() == [5, -1]
    assert graph.float_activations() == ["x", "c", "d", "flat", "y"]
    assert graph.is_shape_node("Shape_2") and not graph.is_shape_node("conv")


def test_parameters_and_fan():
    graph = load(_exporter_like_model())
    assert set(graph.parameters) == {"conv.weight", "dw.weight", "fc.weight"}
    assert graph.parameter_of("fc.weight_t") == "fc.weight"
    assert graph.parametric_nodes == ["conv", "dw", "fc"]
    assert graph.fan_in_out("conv") == (36, 72)
    assert graph.fan_in_out("dw") == (9, 9)  # depthwise: one input channel per group
    assert graph.fan_in_out("fc") == (288, 10)


def test_gemm_fan_with_transB():
    graph = load(mlp([6, 5, 3]))
    assert graph.fan_in_out("fc0") == (6, 5)
    assert graph.parameters["w0"].roles == {"weight"}
    assert graph.parameters["b0"].roles == {"bias"}


def test_symbolic_dims_resolution_and_errors():
    graph = load(mlp([6, 5]), batch_size=7)
    assert graph.input_shapes == {"x": (7, 6)}
    assert load(mlp([6, 5]), input_shapes={"x": (3, 6)}).shape("h0") == (3, 5)
    with pytest.raises(InvalidOptionError, match="does not match"):
        load(mlp([6, 5]), input_shapes={"x": (3, 7)})
    with pytest.raises(InvalidOptionError, match="not an input"):
        load(mlp([6, 5]), input_shapes={"nope": (3, 6)})


def _i64(name, values):
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def _shape_scaled_model():
    """x [batch, 4, 6] -> Reshape to [batch, 4, 2, 3] through a Slice whose end comes from a Mod
    (onnx's data propagation stops there), then the exporter's attention scale: Shape ->
    Slice[-1:] -> Cast -> Sqrt -> Div(1, .) -> Mul(x, .)."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Mod", ["minus_one", "three"], ["end"]),
        helper.make_node("Slice", ["s", "zero", "end"], ["lead"]),
        helper.make_node("Concat", ["lead", "split"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["r"]),
        helper.make_node("Shape", ["r"], ["rs"]),
        helper.make_node("Slice", ["rs", "minus_one", "big"], ["last"]),
        helper.make_node("Cast", ["last"], ["last_f"], to=TensorProto.FLOAT),
        helper.make_node("Sqrt", ["last_f"], ["root"]),
        helper.make_node("Div", ["one", "root"], ["scale"]),
        helper.make_node("Mul", ["r", "scale"], ["y"], name="scale_mul"),
    ]
    inits = [_i64("minus_one", [-1]), _i64("three", [3]), _i64("zero", [0]),
             _i64("split", [2, 3]), _i64("big", [100]),
             numpy_helper.from_array(np.array([1.0], np.float32), "one")]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )


def test_values_computed_from_shapes_are_constant_whatever_the_op():
    from onnxinit.propagate import propagate

    graph = load(_shape_scaled_model(), batch_size=5)
    assert graph.shape("r") == (5, 4, 2, 3)
    for tensor in ("rs", "last", "last_f", "root", "scale"):
        assert graph.is_constant(tensor) and not graph.is_signal(tensor), tensor
    np.testing.assert_allclose(graph.value("scale"), [1 / np.sqrt(3)], rtol=1e-6)
    assert graph.float_activations() == ["x", "r", "y"]
    result = propagate(graph)
    assert not result.fallbacks
    np.testing.assert_allclose(result.moments["y"].total(), (0.0, 1 / 3), rtol=1e-6)


def test_declared_value_info_kept_where_inference_has_none():
    # a custom op's output: onnx cannot infer it, the exporter declared it
    nodes = [
        helper.make_node("Foo", ["x"], ["h"], domain="com.example", name="foo"),
        helper.make_node("Relu", ["h"], ["y"], name="relu"),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        extra_opsets=[("com.example", 1)],
    )
    model.graph.value_info.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, [5, 3]))
    graph = load(model)
    assert graph.shape("h") == (5, 3)
    assert graph.shape("y") == (5, 3)  # inference continues from the declared shape
    assert not any("could not" in w for w in graph.warnings)


def test_constant_folding_falls_back_to_onnxruntime():
    # onnx's reference GatherElements fails beyond 64 entries along the axis (BERT's
    # token_type_ids buffer): onnxruntime folds it instead
    nodes = [
        helper.make_node("GatherElements", ["table", "idx"], ["g"], axis=1),
        helper.make_node("Cast", ["g"], ["gf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x", "gf"], ["y"], name="mul"),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 70])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [_i64("table", [list(range(100))]), _i64("idx", [list(range(69, -1, -1))])],
    )
    graph = load(model)
    assert graph.value("gf").tolist() == [list(range(69, -1, -1))]
    from onnxinit.propagate import propagate

    result = propagate(graph)
    assert not result.fallbacks
    np.testing.assert_allclose(result.moments["y"].total()[1], np.mean(np.arange(70.0) ** 2))


def test_with_values_is_a_view_that_leaves_the_graph_alone():
    graph = load(_exporter_like_model())
    original = graph.value("fc.weight_t").copy()
    doubled = graph.with_values({"fc.weight": 2 * graph.value("fc.weight")})
    # a constant folded from the overridden initializer is recomputed in the view only
    np.testing.assert_array_equal(doubled.value("fc.weight_t"), 2 * original)
    np.testing.assert_array_equal(graph.value("fc.weight_t"), original)
    assert doubled.value("conv.weight") is graph.value("conv.weight")  # the rest is shared
    assert doubled.table is graph.table and doubled.value("shape").tolist() == [32, -1]
    # a view of a view keeps both overrides; its base is unchanged
    both = doubled.with_values({"conv.weight": np.zeros((8, 4, 3, 3), np.float32)})
    assert not both.value("conv.weight").any()
    np.testing.assert_array_equal(both.value("fc.weight_t"), 2 * original)
    assert doubled.value("conv.weight").any()
    with pytest.raises(InvalidOptionError, match="not an initializer"):
        graph.with_values({"flat": np.zeros(1)})


def test_take_changes_gives_the_values_of_a_chain_of_views():
    from onnxinit.plan import Change

    graph = load(_exporter_like_model())
    original = graph.value("fc.weight_t").copy()
    steps = [{"fc.weight": Change(scale=2.0)}, {"conv.weight": Change(scale=0.5)},
             {"fc.weight": Change(scale=3.0)}]
    chained, owned = graph, graph.with_changes({})
    for step in steps:
        chained = chained.with_changes(step)
        owned.take_changes(step)
        for name in ("fc.weight", "fc.weight_t", "conv.weight"):
            np.testing.assert_array_equal(owned.value(name), chained.value(name))
    np.testing.assert_allclose(owned.value("fc.weight_t"), 6 * graph.value("fc.weight_t"),
                               rtol=1e-6)
    np.testing.assert_array_equal(graph.value("fc.weight_t"), original)  # the graph is not
    with pytest.raises(ValueError, match="not the graph"):
        graph.take_changes({"fc.weight": Change(scale=2.0)})
    with pytest.raises(InvalidOptionError, match="not an initializer"):
        owned.take_changes({"flat": Change(scale=2.0)})


def test_networkx_view_has_one_edge_per_node_pair_that_passes_a_tensor():
    nx = pytest.importorskip("networkx")
    model = _exporter_like_model()
    g = load(model, input_shapes={"x": (2, 4, 8, 8)})
    view = g.nx
    expected = {}
    for node in model.graph.node:  # independent of the graph's indexes: read from the file
        for name in node.input:
            src = next((p for p in model.graph.node if name in p.output), None)
            if src is not None:
                expected.setdefault((src.name or src.output[0], node.name or node.output[0]),
                                    []).append(name)
    names = {nid: (n.name or n.output[0]) for nid, n in g.node_by_id.items()}
    got = {(names[a], names[b]): d["tensors"] for a, b, d in view.edges(data=True)}
    assert got == expected
    assert nx.is_directed_acyclic_graph(view)
    assert {view.nodes[n]["op_type"] for n in view} == {n.op_type for n in model.graph.node}
    assert g.nx is view  # built once


def test_an_output_declared_with_symbolic_dims_gets_its_shape_from_folded_constants(monkeypatch):
    """onnx's data propagation stops at Mod: the Reshape's shape is known only once folded, and
    the graph output it produces, declared with symbolic dims (as torch exports GPT-2's), must
    take that shape rather than be measured by running the model."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "one"], ["d"], axis=0),
        helper.make_node("Mod", ["d", "big"], ["dm"]),
        helper.make_node("Unsqueeze", ["dm", "axes"], ["du"]),
        helper.make_node("Concat", ["minus_one", "du"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape"),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["y_dim_0", "y_dim_1"])],
        [_i64("one", 1), _i64("big", 1000), _i64("axes", [0]), _i64("minus_one", [-1])],
    )

    def measured(*args, **kwargs):
        raise AssertionError("the model was run to measure a shape")

    monkeypatch.setattr("onnxinit.graph.measured_shapes", measured)
    graph = load(model, batch_size=3)
    assert graph.shape("y") == (3, 6)
    assert not graph.missing_shapes()


def test_a_dim_named_as_the_batch_is_the_batch_on_any_axis():
    """torch exports an RNN's initial state as ``h0 [layers, batch, hidden]`` beside ``x
    [batch, T, F]``, both axes named "batch": h0's axis 1 is the batch, not an assumed length
    (before: 128, and onnxruntime refused the measuring run's h0 of 2x128x16)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5, 4])
    h0 = helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, "batch", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("W", (1, 9, 4)), ("R", (1, 9, 3)))]
    node = helper.make_node("GRU", ["xt", "W", "R", "", "", "h0"], ["", "y"], hidden_size=3)
    transpose = helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2])
    model = helper.make_model(helper.make_graph([transpose, node], "g", [x, h0], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    graph = load(model, batch_size=7)
    assert graph.input_shapes == {"x": (7, 5, 4), "h0": (1, 7, 3)}
    assert not graph.assumed_lengths
