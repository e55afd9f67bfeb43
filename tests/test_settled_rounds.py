"""The folding rounds of ModelGraph._refine_shapes infer only the nodes whose results can still
matter (GraphStructure.settled, FoldedInference's ``left_out``): each round's entries are what
onnx's inference of the whole light copy gives (order, element types, shapes), but for the
names of unknown dims, and a new unknown dim never takes the name of a dim kept from an
earlier round."""

from __future__ import annotations

from itertools import chain

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxinit.graph import load
from onnxinit.passes import FoldedInference, described

from .models import make_model
from .test_shape_rounds import _padded_stages, _runtime_values


def _unnamed(vi: onnx.ValueInfoProto) -> tuple:
    """(name, element type, shape) of an entry, its unknown dims' names replaced by '?'."""
    name, elem, shape, _ = described(vi)
    if shape is not None:
        shape = tuple("?" if isinstance(d, str) and d.startswith("unk__") else d for d in shape)
    return name, elem, shape


def test_rounds_leave_settled_nodes_out_and_give_the_whole_model_s_entries(monkeypatch):
    inferred_nodes: list[int] = []
    real_infer = onnx.shape_inference.infer_shapes

    def counted(model, *args, **kwargs):
        inferred_nodes.append(len(model.graph.node))
        return real_infer(model, *args, **kwargs)

    original = FoldedInference.infos
    rounds: list[tuple[int, int]] = []

    def checked(self, constants, left_out=()):
        infos = original(self, constants, left_out)
        # the oracle: onnx's inference of the whole light copy (every node, renamed outputs)
        whole = real_infer(self.work, data_prop=True).graph
        expected = [vi for vi in chain(whole.value_info, whole.output)
                    if vi.name not in constants and not vi.name.endswith("__onnxinit_folded")]
        expected.extend(self.protos[name][1] for name in constants)
        assert [_unnamed(vi) for vi in infos] == [_unnamed(vi) for vi in expected]
        rounds.append((inferred_nodes[-1], len(self.work.graph.node)))
        return infos

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", counted)
    monkeypatch.setattr(FoldedInference, "infos", checked)
    graph = load(_padded_stages((3, 4, 5, 6)), input_shapes={"x": (2, 2, 7, 3)})
    assert len(rounds) >= 3
    # after the first round's folds, the nodes that only computed them are left out
    assert any(inferred < total for inferred, total in rounds[1:]), rounds
    assert not graph.missing_shapes()
    measured = _runtime_values(_padded_stages((3, 4, 5, 6)),
                               {"x": np.ones((2, 2, 7, 3), np.float32)})
    for name, value in measured.items():
        if not graph.is_constant(name):
            assert graph.shape(name) == value.shape, name


def _i64(name, value):
    return numpy_helper.from_array(np.array(value, dtype=np.int64), name)


def test_a_new_unknown_dim_does_not_take_a_kept_dim_s_name():
    """``n = NonZero(k)`` of a constant has an unknown dim; once it is left out, its entry is
    kept, and the unknown dim of ``y = NonZero(x)``, inferred again, must be another dim."""
    model = make_model(
        [helper.make_node("NonZero", ["k"], ["n"]),
         helper.make_node("Shape", ["n"], ["s"]),
         helper.make_node("NonZero", ["x"], ["y"]),
         helper.make_node("Cast", ["y"], ["yf"], to=TensorProto.FLOAT),
         helper.make_node("Reshape", ["yf", "s"], ["out"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [_i64("k", [1, 0, 1])])
    first = onnx.shape_inference.infer_shapes(model, data_prop=True)
    dims = {vi.name: described(vi)[2] for vi in first.graph.value_info}
    assert isinstance(dims["n"][1], str) and isinstance(dims["y"][1], str)
    assert dims["n"][1] != dims["y"][1]  # onnx names each unknown dim once
    first.graph.output[0].type.tensor_type.ClearField("shape")  # its name would be taken
    inference = FoldedInference(first)
    infos = inference.infos({"s": np.array([1, 2], np.int64)}, ["n", "s"])
    assert infos is not None
    got = {vi.name: described(vi)[2] for vi in infos}
    assert got["n"] == dims["n"]  # kept: its node is left out
    assert isinstance(got["y"][1], str) and got["y"][1] != got["n"][1]
