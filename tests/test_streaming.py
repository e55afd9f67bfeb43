"""Large models in bounded memory: external data memory-mapped on load, weights summed a block
at a time, the rescaled model streamed tensor by tensor to its files (byte for byte where a
tensor is untouched), nothing left behind by a failure mid-write, and the peak memory of a
``rescale`` of a 200 MB model measured in a subprocess."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit import initializers, writeback
from onnxinit.errors import UnsupportedModelError, WriteError
from onnxinit.graph import load
from onnxinit.plan import Change, Plan
from onnxinit.rescale import rescale
from onnxinit.rules.weighted import moments_along, weighted_sums
from onnxinit.runtime import make_session
from onnxinit.writeback import write_model

ROOT = Path(__file__).resolve().parents[1]


def _external_model(folder: Path, widths=(48, 64, 32), dtype=np.float32, seed=0) -> Path:
    """MatMul + Add + Relu layers, every tensor in ``m.onnx.data`` (small ones too)."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        inits += [numpy_helper.from_array((rng.standard_normal((a, b)) / np.sqrt(a))
                                          .astype(dtype), f"w{i}"),
                  numpy_helper.from_array(rng.standard_normal(b).astype(dtype), f"b{i}")]
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"mm{i}"),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"], name=f"add{i}"),
                  helper.make_node("Relu", [f"a{i}"], [f"h{i}"], name=f"relu{i}")]
        x = f"h{i}"
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", elem, [4, widths[0]])],
                              [helper.make_tensor_value_info(x, elem, [4, widths[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = folder / "m.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="m.onnx.data",
                    size_threshold=0)
    return path


def _ranges(path: Path) -> dict[str, tuple[str, int, int]]:
    """tensor -> (file, offset, length) as the model file on disk says."""
    out = {}
    for tensor in onnx.load(str(path), load_external_data=False).graph.initializer:
        info = {e.key: e.value for e in tensor.external_data}
        out[tensor.name] = (info["location"], int(info.get("offset", 0)), int(info["length"]))
    return out


def _bytes(folder: Path, where: tuple[str, int, int]) -> bytes:
    location, offset, length = where
    with open(folder / location, "rb") as handle:
        handle.seek(offset)
        return handle.read(length)


def test_external_data_is_memory_mapped_not_read(tmp_path):
    path = _external_model(tmp_path, widths=(600, 500, 8))  # w0 is 1.2 MB: stays on disk
    graph = load(path)
    w0 = graph.initializers["w0"]
    assert initializers.is_external(w0) and not w0.HasField("raw_data")
    value = graph.value("w0")
    assert isinstance(value, np.memmap) and not value.flags.writeable
    expected = onnx.load(str(path)).graph.initializer[0]  # onnx reads the data in
    np.testing.assert_array_equal(value, numpy_helper.to_array(expected))
    # small external tensors are read in (shape inference reads constants)
    assert not initializers.is_external(graph.initializers["b0"])


def test_large_inline_initializers_stay_in_the_model_file(tmp_path):
    """A model without external data: raw data over 1 MiB is not read on load but mapped from
    the model file; values, writing the model back (byte for byte) and running it all hold."""
    inline = tmp_path / "inline.onnx"
    onnx.save_model(onnx.load(str(_external_model(tmp_path, widths=(600, 500, 600)))),
                    str(inline))
    graph = load(inline)
    assert graph.external == {}
    expected = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(inline)).graph.initializer}
    mapped = [n for n, t in graph.initializers.items() if initializers.is_external(t)]
    assert mapped == ["w0", "w1"]
    for name, value in expected.items():
        np.testing.assert_array_equal(graph.value(name), value)
    copy = write_model(graph.source, tmp_path / "copy.onnx", source_path=inline)
    assert copy.read_bytes() == inline.read_bytes()
    # onnxruntime runs the model as loaded (the mapped tensors handed over)
    x = {"x": np.random.default_rng(1).standard_normal((4, 600)).astype(np.float32)}
    np.testing.assert_array_equal(make_session(graph.model).run(None, x)[0],
                                  make_session(str(inline)).run(None, x)[0])
    out = rescale(inline, "autoinit", output=tmp_path / "out.onnx")
    # written inline again: no data file beside the output
    assert sorted(os.listdir(tmp_path)) == ["copy.onnx", "inline.onnx", "m.onnx", "m.onnx.data",
                                            "out.onnx"]
    written = {t.name: numpy_helper.to_array(t)
               for t in onnx.load(str(out.output)).graph.initializer}
    np.testing.assert_array_equal(
        written["w1"], (expected["w1"].astype(np.float64) * out.plan.changes["w1"].scale)
        .astype(np.float32))


def test_untouched_tensors_round_trip_byte_for_byte(tmp_path):
    path = _external_model(tmp_path)
    graph = load(path)
    plan = Plan("t", {"w1": Change(scale=0.37), "b0": Change(array=np.full(64, 0.5))})
    out = write_model(graph.source, tmp_path / "out.onnx", plan, source_path=path,
                      external=graph.external)
    before, after = _ranges(path), _ranges(out)
    assert list(before) == list(after)
    for name in ("w0", "b1"):
        assert _bytes(tmp_path, after[name]) == _bytes(tmp_path, before[name]), name
    # the changed tensors, computed independently: float64 product rounded once to float32
    old_w1 = np.frombuffer(_bytes(tmp_path, before["w1"]), "<f4").reshape(64, 32)
    new_w1 = np.frombuffer(_bytes(tmp_path, after["w1"]), "<f4").reshape(64, 32)
    np.testing.assert_array_equal(new_w1, (old_w1.astype(np.float64) * 0.37).astype(np.float32))
    assert np.all(np.frombuffer(_bytes(tmp_path, after["b0"]), "<f4") == 0.5)
    # packed one after another, as onnx.save_model packs them
    offsets = [after[n][1] for n in after]
    lengths = [after[n][2] for n in after]
    assert offsets == list(np.cumsum([0, *lengths[:-1]]))
    # and the file loads with onnx, with the same nodes, in the same order
    loaded = onnx.load(str(out))
    assert [n.name for n in loaded.graph.node] == [n.name for n in onnx.load(str(path)).graph.node]


def test_streamed_model_file_is_what_onnx_writes(tmp_path):
    """The model file is written a piece at a time; its bytes are the standard serialization."""
    path = _external_model(tmp_path)
    graph = load(path)
    out = write_model(graph.source, tmp_path / "copy.onnx", source_path=path,
                      external=graph.external)
    header = onnx.load(str(out), load_external_data=False)
    assert out.read_bytes() == header.SerializeToString(deterministic=True)
    inline = tmp_path / "inline.onnx"
    onnx.save_model(onnx.load(str(path)), str(inline))  # data inline
    graph = load(inline)
    copy = write_model(graph.source, tmp_path / "inline.copy.onnx", source_path=inline)
    assert copy.read_bytes() == inline.read_bytes()


def test_small_chunks_give_the_same_bytes(tmp_path, monkeypatch):
    path = _external_model(tmp_path, widths=(64, 96, 16), dtype=np.float16)
    graph = load(path)
    plan = Plan("t", {"w0": Change(scale=1.7), "w1": Change(scale=0.2)})
    whole = write_model(graph.source, tmp_path / "a.onnx", plan, source_path=path,
                        external=graph.external)
    monkeypatch.setattr(writeback, "WORK_BYTES", 40)  # a few elements per chunk
    monkeypatch.setattr(initializers, "CHUNK_BYTES", 24)
    chunked = write_model(graph.source, tmp_path / "b.onnx", plan, source_path=path,
                          external=graph.external)
    assert (tmp_path / "a.onnx.data").read_bytes() == (tmp_path / "b.onnx.data").read_bytes()
    assert _ranges(whole) == {k: ("a.onnx.data", *v[1:]) for k, v in _ranges(chunked).items()}


def test_failure_mid_write_leaves_nothing(tmp_path, monkeypatch):
    path = _external_model(tmp_path)
    graph = load(path)
    listing = sorted(os.listdir(tmp_path))
    # an overflow found in the last tensor, after the others were streamed: nothing is left
    plan = Plan("t", {"w0": Change(scale=2.0), "b1": Change(scale=1e300)})
    with pytest.raises(UnsupportedModelError, match="'b1' overflow"):
        write_model(graph.source, tmp_path / "out.onnx", plan, source_path=path,
                    external=graph.external)
    assert sorted(os.listdir(tmp_path)) == listing
    # the disk fills up in the middle of the second tensor copied byte for byte
    folder = tmp_path / "big"
    folder.mkdir()
    path = _external_model(folder, widths=(600, 500, 600))  # w0, w1: 1.2 MB, left on disk
    graph = load(path)
    listing = sorted(os.listdir(folder))
    written = []
    real_range = initializers.copy_range

    def filling_up(source, offset, length, out):
        if written:
            real_range(source, offset, length // 2, out)
            raise OSError(28, "No space left on device")
        written.append(length)
        real_range(source, offset, length, out)

    monkeypatch.setattr(initializers, "copy_range", filling_up)
    with pytest.raises(WriteError, match="No space left on device"):
        write_model(graph.source, folder / "out.onnx", Plan("t", {"b0": Change(scale=2.0)}),
                    source_path=path, external=graph.external)
    assert written and sorted(os.listdir(folder)) == listing


def test_weighted_sums_in_blocks_equal_the_whole_product():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((300, 70)).astype(np.float32)
    mu, nu = rng.standard_normal((5, 300)), rng.random((5, 300))
    w64 = w.astype(np.float64)
    for weight, (m_ref, v_ref) in ((w, (mu @ w64, nu @ w64**2)),
                                   (w.T, (mu[:, :70] @ w64.T, nu[:, :70] @ (w64.T) ** 2))):
        k = weight.shape[0]
        m, v = weighted_sums(mu[:, :k], nu[:, :k], weight, block_bytes=8 * 7 * 70)
        np.testing.assert_allclose(m, m_ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(v, v_ref, rtol=1e-12)
    table = rng.standard_normal((1000, 6)).astype(np.float32) * 3 + 1
    for axis in (0, 1):
        mean, var = moments_along(table, axis, block_bytes=8 * 6 * 37)
        np.testing.assert_allclose(mean, table.astype(np.float64).mean(axis=axis), rtol=1e-12)
        np.testing.assert_allclose(var, table.astype(np.float64).var(axis=axis), rtol=1e-10)


def _peak_rss(args: list[str]) -> int:
    """Peak resident memory in bytes of ``python -m onnxinit ARGS``, run as the only child of a
    fresh interpreter (``ru_maxrss`` of RUSAGE_CHILDREN is that child's)."""
    wrapper = ("import resource, subprocess, sys; "
               "code = subprocess.run(sys.argv[1:], capture_output=True).returncode; "
               "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-m", "onnxinit", *args],
                         capture_output=True, text=True, check=True, env=env)
    code, kib = out.stdout.split()
    assert code == "0", out
    return int(kib) * 1024


def _big_model(folder: Path, width: int, layers: int) -> Path:
    """Gemm(x, W^T) + Relu layers with their weights written straight to the data file."""
    rng = np.random.default_rng(0)
    nodes, inits, x, offset = [], [], "x", 0
    with open(folder / "big.onnx.data", "wb") as handle:
        for i in range(layers):
            handle.write((rng.standard_normal((width, width), dtype=np.float32)
                          * np.float32(width ** -0.5)).tobytes())
            tensor = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[width, width])
            for key, value in (("location", "big.onnx.data"), ("offset", str(offset)),
                               ("length", str(width * width * 4))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            tensor.data_location = TensorProto.EXTERNAL
            inits.append(tensor)
            offset += width * width * 4
            nodes += [helper.make_node("Gemm", [x, f"w{i}"], [f"g{i}"], transB=1),
                      helper.make_node("Relu", [f"g{i}"], [f"h{i}"])]
            x = f"h{i}"
    graph = helper.make_graph(
        nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, width])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [8, width])], inits)
    path = folder / "big.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                       ir_version=8).SerializeToString())
    return path


def test_rescale_of_a_200_mb_model_stays_under_one_and_a_half_times_its_size(tmp_path):
    """Peak RSS of ``rescale --method autoinit`` (whole process: interpreter, numpy, onnx and
    onnxinit included) below 1.5x the model's 200 MB; and above the same command on a model 50
    times smaller by less than the model's size, so the margin is not the interpreter's."""
    small_dir, big_dir = tmp_path / "small", tmp_path / "big"
    small_dir.mkdir()
    big_dir.mkdir()
    big = _big_model(big_dir, width=3584, layers=4)  # 4 x 51.4 MB
    small = _big_model(small_dir, width=506, layers=4)  # 4 MB
    size = (big_dir / "big.onnx.data").stat().st_size
    assert 200e6 < size < 210e6
    peak = _peak_rss(["rescale", str(big), "-o", str(big_dir / "out.onnx")])
    baseline = _peak_rss(["rescale", str(small), "-o", str(small_dir / "out.onnx")])
    print(f"peak RSS {peak / 1e6:.0f} MB for a {size / 1e6:.0f} MB model "
          f"({peak / size:.2f}x), {baseline / 1e6:.0f} MB for a 4 MB one")
    assert peak < 1.5 * size
    assert peak - baseline < size
    # the output is the rescaled model: every weight scaled, nothing else
    record = json.loads({p.key: p.value for p in
                         onnx.load(str(big_dir / "out.onnx"), load_external_data=False)
                         .metadata_props}["onnxinit.plan"])
    assert sorted(record["scales"]) == ["w0", "w1", "w2", "w3"]


def test_rescale_result_model_is_made_on_demand(tmp_path):
    path = _external_model(tmp_path)
    result = rescale(path, "autoinit", output=tmp_path / "out.onnx")
    assert "model" not in vars(result)  # not built by rescale itself
    rescaled = {t.name: t for t in result.model.graph.initializer}
    on_disk = {t.name: numpy_helper.to_array(t)
               for t in onnx.load(str(tmp_path / "out.onnx")).graph.initializer}
    for name, value in on_disk.items():
        np.testing.assert_array_equal(initializers.tensor_array(rescaled[name]), value)


def test_export_weights_of_a_200_mb_model_streams_the_tensors(tmp_path):
    """Peak RSS of ``export-weights`` below 1.5x the model's 200 MB (the file is written tensor
    by tensor from the memory maps, not built in memory), and the reference reader agrees."""
    big = _big_model(tmp_path, width=3584, layers=4)
    size = (tmp_path / "big.onnx.data").stat().st_size
    out = tmp_path / "w.safetensors"
    peak = _peak_rss(["export-weights", str(big), "-o", str(out)])
    print(f"export-weights peak RSS {peak / 1e6:.0f} MB for a {size / 1e6:.0f} MB model")
    assert peak < 1.5 * size
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    loaded = safetensors_numpy.load_file(str(out))
    model = onnx.load(str(big))  # onnx's own reader, external data included
    assert sorted(loaded) == ["w0", "w1", "w2", "w3"]
    for tensor in model.graph.initializer:
        np.testing.assert_array_equal(loaded[tensor.name], numpy_helper.to_array(tensor))
