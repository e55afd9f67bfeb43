"""Write-back: plans applied to copies, atomic saves, external data, dtypes, composition."""

from __future__ import annotations

import os
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit import writeback
from onnxinit.errors import InvalidOptionError, UnsupportedModelError, WriteError
from onnxinit.graph import load
from onnxinit.plan import Change, Plan
from onnxinit.output_paths import default_output
from onnxinit.writeback import apply_plan, save_model, write_model


def _model(dtype=TensorProto.FLOAT) -> onnx.ModelProto:
    """Conv -> Relu -> Gemm with doc strings, metadata and a non-default IR version."""
    rng = np.random.default_rng(0)
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np_dtype), "conv.w")
    w.doc_string = "conv weight"
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np_dtype), "conv.b")
    fc = numpy_helper.from_array(rng.standard_normal((5, 64)).astype(np_dtype), "fc.w")
    shape = numpy_helper.from_array(np.array([0, -1], dtype=np.int64), "flat_shape")
    nodes = [
        helper.make_node("Conv", ["x", "conv.w", "conv.b"], ["c"], name="conv", pads=[1] * 4,
                         doc_string="the conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Reshape", ["r", "flat_shape"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc.w"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "net",
        [helper.make_tensor_value_info("x", dtype, [2, 3, 4, 4])],
        [helper.make_tensor_value_info("y", dtype, [2, 5])],
        [w, b, fc, shape], doc_string="graph doc",
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8,
                              doc_string="model doc", producer_name="test")
    helper.set_model_props(model, {"author": "tests", "license": "MIT"})
    return model


def _save(model, path: Path, **external) -> Path:
    onnx.save_model(model, str(path), **external)
    return path


def _inits(model) -> dict[str, TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def _without_initializers(model) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.initializer[:]
    return copy


def test_round_trip_touches_only_planned_tensors(tmp_path):
    src = _save(_model(), tmp_path / "model.onnx")
    graph = load(src)
    new_fc = np.full((5, 64), 0.25, dtype=np.float32)
    plan = Plan("test", {"conv.w": Change(scale=0.5, rule="r", target="t"),
                         "fc.w": Change(array=new_fc)})
    out = save_model(apply_plan(graph.source, plan), default_output(src, "test"),
                     source_path=src, external=graph.external)
    assert out == tmp_path / "model.test.onnx"
    before, after = onnx.load(str(src)), onnx.load(str(out))
    b, a = _inits(before), _inits(after)
    assert list(b) == list(a)
    for name in ("conv.b", "flat_shape"):
        assert a[name].SerializeToString() == b[name].SerializeToString()
    np.testing.assert_array_equal(numpy_helper.to_array(a["conv.w"]),
                                  numpy_helper.to_array(b["conv.w"]) * np.float32(0.5))
    np.testing.assert_array_equal(numpy_helper.to_array(a["fc.w"]), new_fc)
    assert a["conv.w"].doc_string == "conv weight"
    assert list(a["conv.w"].dims) == [4, 3, 3, 3]
    assert _without_initializers(after) == _without_initializers(before)
    assert after.ir_version == 8 and after.opset_import[0].version == 17
    assert {p.key: p.value for p in after.metadata_props} == {"author": "tests", "license": "MIT"}
    assert after.doc_string == "model doc" and after.graph.node[0].doc_string == "the conv"

    x = np.random.default_rng(1).standard_normal((2, 3, 4, 4)).astype(np.float32)
    ys = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
          for p in (src, out)]
    assert ys[0].shape == ys[1].shape == (2, 5)
    assert not np.allclose(ys[0], ys[1])


def test_apply_plan_leaves_input_untouched_and_errors_clearly():
    model = _model()
    before = model.SerializeToString()
    apply_plan(model, Plan("t", {"conv.w": Change(scale=3.0)}))
    assert model.SerializeToString() == before
    with pytest.raises(InvalidOptionError, match="'nope'.*not an initializer"):
        apply_plan(model, Plan("t", {"nope": Change(scale=2.0)}))
    with pytest.raises(InvalidOptionError, match=r"shape \(3, 3\).*\(4, 3, 3, 3\)"):
        apply_plan(model, Plan("t", {"conv.w": Change(array=np.zeros((3, 3)))}))
    with pytest.raises(UnsupportedModelError, match="INT64"):
        apply_plan(model, Plan("t", {"flat_shape": Change(scale=2.0)}))
    with pytest.raises(InvalidOptionError, match="exactly one"):
        Change(scale=1.0, array=np.zeros(1))
    with pytest.raises(InvalidOptionError, match="exactly one"):
        Change()


def test_external_data_round_trip(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save_model(_model(), str(src), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.onnx.data", size_threshold=0)
    data_before = (tmp_path / "m.onnx.data").read_bytes()
    graph = load(src)
    assert set(graph.external) == {"conv.w", "conv.b", "fc.w", "flat_shape"}
    plan = Plan("autoinit", {"fc.w": Change(scale=2.0)})
    out = save_model(apply_plan(graph.source, plan), default_output(src, "autoinit"),
                     source_path=src, external=graph.external)
    assert (tmp_path / "m.onnx.data").read_bytes() == data_before  # input's data untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "m.autoinit.onnx", "m.autoinit.onnx.data", "m.onnx", "m.onnx.data"]
    header = onnx.load(str(out), load_external_data=False)
    for tensor in header.graph.initializer:
        assert tensor.data_location == TensorProto.EXTERNAL
        assert {e.key: e.value for e in tensor.external_data}["location"] == "m.autoinit.onnx.data"
    reloaded = load(out)
    assert set(reloaded.external.values()) == {"m.autoinit.onnx.data"}
    old, new = _inits(graph.source), _inits(reloaded.source)
    for name in ("conv.w", "conv.b", "flat_shape"):
        assert numpy_helper.to_array(new[name]).tobytes() == numpy_helper.to_array(old[name]).tobytes()
    np.testing.assert_array_equal(numpy_helper.to_array(new["fc.w"]),
                                  numpy_helper.to_array(old["fc.w"]) * 2)


def test_external_data_in_subfolder_keeps_layout(tmp_path):
    model = _model()
    for tensor in model.graph.initializer:
        if tensor.name.startswith("conv"):
            onnx.external_data_helper.set_external_data(tensor, "weights/conv.bin")
    (tmp_path / "weights").mkdir()
    src = tmp_path / "net.onnx"
    onnx.save_model(model, str(src))
    graph = load(src)
    assert graph.external == {"conv.w": "weights/conv.bin", "conv.b": "weights/conv.bin"}
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = save_model(apply_plan(graph.source, Plan("x", {"conv.w": Change(scale=0.5)})),
                     out_dir / "net.x.onnx", source_path=src, external=graph.external)
    assert sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*")) == [
        "net.x.onnx", "weights", "weights/net.x.conv.bin"]
    reloaded = load(out)
    assert reloaded.external == {"conv.w": "weights/net.x.conv.bin",
                                 "conv.b": "weights/net.x.conv.bin"}
    np.testing.assert_array_equal(numpy_helper.to_array(_inits(reloaded.source)["conv.w"]),
                                  numpy_helper.to_array(_inits(graph.source)["conv.w"]) * 0.5)


def test_failure_mid_write_leaves_nothing(tmp_path, monkeypatch):
    src = tmp_path / "m.onnx"
    onnx.save_model(_model(), str(src), save_as_external_data=True, location="m.onnx.data",
                    size_threshold=0)
    graph = load(src)
    listing = sorted(os.listdir(tmp_path))
    real_replace = os.replace
    calls = []

    def failing_replace(a, b):
        calls.append(b)
        if len(calls) == 2:  # the data file is moved, the model move fails
            raise OSError(28, "No space left on device")
        return real_replace(a, b)

    monkeypatch.setattr(writeback.os, "replace", failing_replace)
    with pytest.raises(WriteError, match="No space left on device"):
        save_model(graph.source, tmp_path / "out.onnx", source_path=src, external=graph.external)
    assert calls == [tmp_path / "out.onnx.data", tmp_path / "out.onnx"]
    assert sorted(os.listdir(tmp_path)) == listing  # the data file moved first is removed too

    def failing_write(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(writeback.os, "replace", real_replace)
    monkeypatch.setattr(writeback.os, "fsync", failing_write)
    with pytest.raises(WriteError, match="Input/output error"):
        save_model(graph.source, tmp_path / "out.onnx", source_path=src, external=graph.external)
    assert sorted(os.listdir(tmp_path)) == listing


def test_data_subfolder_created_for_a_failed_write_is_removed(tmp_path, monkeypatch):
    model = _model()
    onnx.external_data_helper.set_external_data(model.graph.initializer[0], "w/a.bin")
    (tmp_path / "w").mkdir()
    src = tmp_path / "m.onnx"
    onnx.save_model(model, str(src))
    graph = load(src)
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def boom(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(writeback.os, "replace", boom)
    with pytest.raises(RuntimeError, match="interrupted"):
        save_model(graph.source, out_dir / "m.onnx", source_path=src, external=graph.external)
    assert list(out_dir.iterdir()) == []


def test_input_not_overwritten_without_in_place(tmp_path):
    src = _save(_model(), tmp_path / "m.onnx")
    before = src.read_bytes()
    graph = load(src)
    new = apply_plan(graph.source, Plan("t", {"conv.w": Change(scale=2.0)}))
    with pytest.raises(InvalidOptionError, match="the output is the input model"):
        save_model(new, src, source_path=src)
    with pytest.raises(InvalidOptionError, match="the output is the input model"):
        save_model(new, tmp_path / "." / "m.onnx", source_path=src)
    assert src.read_bytes() == before
    save_model(new, src, source_path=src, in_place=True)
    assert src.read_bytes() != before
    assert _inits(onnx.load(str(src)))["conv.w"] == _inits(new)["conv.w"]
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]


def test_in_place_with_external_data(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save_model(_model(), str(src), save_as_external_data=True, location="m.onnx.data",
                    size_threshold=0)
    graph = load(src)
    new = apply_plan(graph.source, Plan("t", {"conv.b": Change(scale=-1.0)}))
    save_model(new, src, source_path=src, external=graph.external, in_place=True)
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.onnx.data"]
    reloaded = load(src)
    np.testing.assert_array_equal(numpy_helper.to_array(_inits(reloaded.source)["conv.b"]),
                                  -numpy_helper.to_array(_inits(graph.source)["conv.b"]))


def test_output_over_the_inputs_data_file_is_refused(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save_model(_model(), str(src), save_as_external_data=True, location="m.onnx.data",
                    size_threshold=0)
    graph = load(src)
    with pytest.raises(InvalidOptionError, match="data file"):
        save_model(graph.source, tmp_path / "m.onnx.data", source_path=src,
                   external=graph.external)


def test_unwritable_output_folder(tmp_path, monkeypatch):
    (tmp_path / "file.txt").write_text("a file, not a folder")
    with pytest.raises(WriteError, match="is not a folder"):
        save_model(_model(), tmp_path / "file.txt" / "out.onnx")
    with pytest.raises(WriteError, match="does not exist"):
        save_model(_model(), tmp_path / "missing" / "out.onnx")
    with pytest.raises(WriteError, match="is a folder"):
        save_model(_model(), tmp_path)
    monkeypatch.setattr(writeback.os, "access", lambda path, mode: False)
    with pytest.raises(WriteError, match="not writable"):
        save_model(_model(), tmp_path / "out.onnx")
    assert sorted(os.listdir(tmp_path)) == ["file.txt"]


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT16, TensorProto.BFLOAT16])
def test_half_precision_scaled_in_float64_and_written_in_its_dtype(tmp_path, dtype):
    model = _model(TensorProto.FLOAT16)
    if dtype == TensorProto.BFLOAT16:  # bf16 Conv is not on onnxruntime's CPU: only tensors
        values = np.linspace(-3, 3, 4 * 27).reshape(4, 3, 3, 3).astype(ml_dtypes.bfloat16)
        tensor = helper.make_tensor("conv.w", TensorProto.BFLOAT16, values.shape,
                                    values.view(np.uint16).tobytes(), raw=True)
        model.graph.initializer[0].CopyFrom(tensor)
    original = numpy_helper.to_array(model.graph.initializer[0])
    new = apply_plan(model, Plan("t", {"conv.w": Change(scale=1 / 3)}))
    tensor = _inits(new)["conv.w"]
    assert tensor.data_type == dtype
    values = numpy_helper.to_array(tensor)
    assert values.dtype == original.dtype
    expected = (original.astype(np.float64) / 3).astype(original.dtype)
    assert values.tobytes() == expected.tobytes()
    assert len(tensor.raw_data) == 2 * original.size
    out = save_model(new, tmp_path / "half.onnx")
    assert _inits(onnx.load(str(out)))["conv.w"] == tensor
    if dtype == TensorProto.FLOAT16:
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        y = session.run(None, {"x": np.ones((2, 3, 4, 4), np.float16)})[0]
        assert y.dtype == np.float16 and y.shape == (2, 5)


def test_half_precision_overflow_is_refused():
    model = _model(TensorProto.FLOAT16)
    with pytest.raises(UnsupportedModelError, match="overflow"):
        apply_plan(model, Plan("t", {"conv.w": Change(scale=1e6)}))


def test_plan_composition():
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    first = Plan("idinit", {"a": Change(array=w, rule="idinit"), "b": Change(scale=2.0),
                            "c": Change(scale=3.0)}, report={"tau": 1})
    second = Plan("autoinit", {"a": Change(scale=0.5, rule="autoinit"), "b": Change(scale=5.0),
                               "c": Change(array=np.ones(2)), "d": Change(scale=7.0)},
                  report={"layers": []})
    both = first.then(second)
    assert both.method == "idinit,autoinit"
    np.testing.assert_array_equal(both.changes["a"].array, w * 0.5)
    assert both.changes["a"].rule == "idinit then autoinit"
    assert both.scales() == {"b": 10.0, "d": 7.0}
    assert both.replaced() == ["a", "c"]
    np.testing.assert_array_equal(both.changes["c"].array, np.ones(2))
    assert both.report == {"steps": [{"method": "idinit", "report": {"tau": 1}},
                                     {"method": "autoinit", "report": {"layers": []}}]}
    third = both.then(Plan("x", {"b": Change(scale=0.1)}))
    assert third.method == "idinit,autoinit,x"
    assert [s["method"] for s in third.report["steps"]] == ["idinit", "autoinit", "x"]
    assert third.changes["b"].scale == pytest.approx(1.0)
    # composing then applying equals applying one after the other
    model = _model()
    p1 = Plan("p1", {"conv.w": Change(array=np.ones((4, 3, 3, 3), np.float32))})
    p2 = Plan("p2", {"conv.w": Change(scale=0.3), "fc.w": Change(scale=2.0)})
    assert apply_plan(model, p1.then(p2)) == apply_plan(apply_plan(model, p1), p2)


def test_same_input_gives_identical_bytes(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save_model(_model(), str(src), save_as_external_data=True, location="m.onnx.data",
                    size_threshold=0)
    plan = Plan("t", {"conv.w": Change(scale=0.7)})
    outputs = []
    for folder in ("a", "b"):
        graph = load(src)
        (tmp_path / folder).mkdir()
        out = save_model(apply_plan(graph.source, plan), tmp_path / folder / "o.onnx",
                         source_path=src, external=graph.external)
        outputs.append((out.read_bytes(), (out.parent / "o.onnx.data").read_bytes()))
    assert outputs[0] == outputs[1]
    # an empty plan on an inline model reproduces the input file byte for byte
    plain = _save(_model(), tmp_path / "plain.onnx")
    copy = save_model(apply_plan(load(plain).source, Plan("t", {})), tmp_path / "copy.onnx",
                      source_path=plain)
    assert copy.read_bytes() == plain.read_bytes()


def test_scaled_inline_tensor_written_in_chunks_is_protobufs_serialization(tmp_path, monkeypatch):
    """A rescaled inline tensor is written a chunk at a time (its fields before raw_data, the
    data, the fields after: doc_string, metadata): the file's bytes are protobuf's own
    serialization of the model with the plan applied in memory."""
    model = _model()
    fc = _inits(model)["fc.w"]
    fc.doc_string = "after raw_data"
    if hasattr(fc, "metadata_props"):
        entry = fc.metadata_props.add()
        entry.key, entry.value = "k", "v"
    src = _save(model, tmp_path / "m.onnx")
    plan = Plan("t", {"fc.w": Change(scale=0.5), "conv.w": Change(scale=3.0)})
    chunks = writeback._changed_chunks
    monkeypatch.setattr(writeback, "_changed_chunks",
                        lambda tensor, change: chunks(tensor, change, chunk_bytes=64))
    out = write_model(load(src).source, tmp_path / "out.onnx", plan, source_path=src)
    expected = apply_plan(onnx.load(str(src)), plan).SerializeToString(deterministic=True)
    assert out.read_bytes() == expected
