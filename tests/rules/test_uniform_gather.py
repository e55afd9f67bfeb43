"""A gather from a constant integer tensor whose entries are all equal is a constant, whatever
its indices. RoBERTa's token types are such a gather: a zero buffer, gathered by position ids
computed from the tokens (``cumsum(ids != pad) * (ids != pad) + pad``), then the token-type
embedding of those zeros: one row added to every token of every sample. Taken as a row drawn
per token, its share of a mean over the tokens was divided by the sequence length (RoBERTa's
attention outputs 0.45-0.54x). Against onnxruntime on random token ids."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxinit.graph import load
from onnxinit.propagate import propagate
from tests.oracle import measured_over_token_ids

B, T, D, V, PAD, MAX_POS = 16, 32, 16, 100, 1, 64


def _roberta_embeddings() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    f32 = lambda name, v: numpy_helper.from_array(np.asarray(v, np.float32), name)  # noqa: E731
    i64 = lambda name, v: numpy_helper.from_array(np.asarray(v, np.int64), name)  # noqa: E731
    nodes = [
        helper.make_node("Equal", ["ids", "pad"], ["is_pad"]),
        helper.make_node("Not", ["is_pad"], ["keep"]),
        helper.make_node("Cast", ["keep"], ["keep_i"], to=TensorProto.INT64),
        helper.make_node("CumSum", ["keep_i", "one"], ["count"]),
        helper.make_node("Mul", ["count", "keep_i"], ["count_kept"]),
        helper.make_node("Add", ["count_kept", "pad"], ["positions"]),
        # the token-type buffer (zeros), expanded to the batch and gathered at the positions
        helper.make_node("Shape", ["ids"], ["ids_shape"]),
        helper.make_node("Gather", ["ids_shape", "zero"], ["batch"]),
        helper.make_node("Concat", ["batch", "max_pos"], ["buffer_shape"], axis=0),
        helper.make_node("Expand", ["buffer", "buffer_shape"], ["buffered"]),
        helper.make_node("GatherElements", ["buffered", "positions"], ["types"], axis=1),
        helper.make_node("Gather", ["word_table", "ids"], ["word"]),
        helper.make_node("Gather", ["type_table", "types"], ["type"]),
        helper.make_node("Gather", ["position_table", "positions"], ["position"]),
        helper.make_node("Add", ["word", "type"], ["word_type"]),
        helper.make_node("Add", ["word_type", "position"], ["x"]),
        helper.make_node("ReduceMean", ["x", "token_axis"], ["token_mean"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "roberta_embeddings",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [B, T])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, T, D]),
         helper.make_tensor_value_info("token_mean", TensorProto.FLOAT, [B, D])],
        [f32("word_table", rng.standard_normal((V, D)) * 0.5),
         f32("type_table", rng.standard_normal((2, D))),
         f32("position_table", rng.standard_normal((MAX_POS + PAD + 1, D)) * 0.5),
         i64("buffer", np.zeros((1, MAX_POS))), i64("pad", PAD), i64("one", 1),
         i64("zero", [0]), i64("max_pos", [MAX_POS]), i64("token_axis", [1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def _measured(model: onnx.ModelProto, names: list[str]) -> dict[str, float]:
    return measured_over_token_ids(model, names, V, (B, T), batches=64)


def test_token_types_gathered_at_computed_positions_are_one_row():
    model = _roberta_embeddings()
    graph = load(model)
    assert graph.is_constant("types")  # zeros whatever the positions
    result = propagate(graph)
    measured = _measured(model, ["x", "token_mean"])
    for name in ("x", "token_mean"):
        ratio = result.moments[name].total()[1] / measured[name]
        assert abs(ratio - 1) < 0.1, (name, ratio)


def test_a_gather_from_a_varied_integer_tensor_stays_unknown():
    model = _roberta_embeddings()
    buffer = next(i for i in model.graph.initializer if i.name == "buffer")
    buffer.CopyFrom(numpy_helper.from_array(np.arange(MAX_POS, dtype=np.int64)[None] % 2,
                                            "buffer"))
    assert not load(model).is_constant("types")
