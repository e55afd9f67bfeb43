"""``onnxinit export-weights`` and ``rescale --export-weights``: files, metadata, dtypes, errors."""

from __future__ import annotations

import json
import struct
import sys
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.cli import main
from onnxinit.errors import InvalidOptionError
from onnxinit.rescale import rescale
from onnxinit.weights import export_weights, float_initializers, read_weights

from .models import make_model, mlp


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture()
def cli(capsys):
    """Run the real entry point (one-line errors, exit codes) and capture its output."""

    def run(args) -> Run:
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


def _header(path) -> dict:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + length])


@pytest.fixture()
def model_path(tmp_path):
    path = tmp_path / "mlp.onnx"
    model = mlp([8, 16, 4], seed=2)
    shape = numpy_helper.from_array(np.array([1, 2], np.int64), "not_a_weight")
    model.graph.initializer.append(shape)
    onnx.save(model, path)
    return path


def test_export_safetensors_keys_values_and_metadata(model_path, tmp_path):
    out = export_weights(model_path)
    assert out == tmp_path / "mlp.safetensors"
    tensors, meta = read_weights(out)
    expected = float_initializers(onnx.load(model_path))
    assert list(expected) == ["w0", "b0", "w1", "b1"]
    assert set(tensors) == set(expected)  # the int64 initializer is not a weight
    for name, value in expected.items():
        np.testing.assert_array_equal(tensors[name], value)
        assert tensors[name].dtype == value.dtype
    assert meta["onnxinit.model"] == str(model_path)
    assert meta["onnxinit.source"] == str(model_path) and meta["onnxinit.method"] == ""
    assert "onnxinit.scales" not in meta  # not a rescaled model
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    loaded = safetensors_numpy.load_file(str(out))  # the reference reader agrees
    np.testing.assert_array_equal(loaded["w0"], expected["w0"])


def test_rescaled_model_metadata_has_per_tensor_scales(model_path, tmp_path):
    result = rescale(model_path, "autoinit", output=tmp_path / "r.onnx")
    out = export_weights(result.output, tmp_path / "r.npz")
    tensors, meta = read_weights(out)
    assert meta["onnxinit.model"] == str(result.output)
    assert meta["onnxinit.source"] == str(model_path)
    assert meta["onnxinit.method"] == "autoinit"
    scales = json.loads(meta["onnxinit.scales"])
    assert set(scales) == {"w0", "b0", "w1", "b1"}
    for name in ("w0", "w1"):
        assert scales[name] == result.plan.changes[name].scale
        np.testing.assert_allclose(
            tensors[name],
            numpy_helper.to_array(next(t for t in onnx.load(model_path).graph.initializer
                                       if t.name == name)) * scales[name], rtol=1e-6)
    assert scales["b0"] == "replaced" and scales["b1"] == "replaced"


def _half_model(tmp_path):
    rng = np.random.default_rng(0)
    h = rng.standard_normal((4, 3)).astype(np.float16)
    bf = rng.standard_normal((4, 3)).astype(ml_dtypes.bfloat16)
    nodes = [helper.make_node("MatMul", ["x", "h"], ["y"]),
             helper.make_node("Cast", ["bf"], ["bf32"], to=TensorProto.FLOAT16),
             helper.make_node("Add", ["y", "bf32"], ["z"])]
    inits = [numpy_helper.from_array(h, "h"), numpy_helper.from_array(bf, "bf")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [4, 4])],
                       [helper.make_tensor_value_info("z", TensorProto.FLOAT16, [4, 3])], inits)
    path = tmp_path / "half.onnx"
    onnx.save(model, path)
    return path, h, bf


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_float16_and_bfloat16_keep_their_dtype(tmp_path, suffix):
    path, h, bf = _half_model(tmp_path)
    out = export_weights(path, tmp_path / f"w{suffix}")
    tensors, _ = read_weights(out)
    assert tensors["h"].dtype == np.float16 and tensors["bf"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(tensors["h"], h)
    assert tensors["bf"].tobytes() == bf.tobytes()
    if suffix == ".safetensors":
        header = _header(out)
        assert header["h"]["dtype"] == "F16" and header["bf"]["dtype"] == "BF16"


def test_format_option_overrides_the_suffix(model_path, tmp_path, cli):
    proc = cli(["export-weights", str(model_path), "-o", str(tmp_path / "w.bin"),
                  "--format", "npz"])
    assert proc.returncode == 0, proc.stderr
    with np.load(tmp_path / "w.bin", allow_pickle=False) as npz:
        assert "w0" in npz.files
    assert set(read_weights(tmp_path / "w.bin")[0]) == {"w0", "b0", "w1", "b1"}


def test_cli_default_output_and_refusals(model_path, tmp_path, cli):
    proc = cli(["export-weights", str(model_path)])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"wrote {tmp_path / 'mlp.safetensors'}"

    before = model_path.read_bytes()
    proc = cli(["export-weights", str(model_path), "-o", str(model_path)])
    assert proc.returncode == 2 and "would overwrite the model" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert model_path.read_bytes() == before

    proc = cli(["export-weights", str(model_path), "-o", str(tmp_path / "no" / "w.npz")])
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    proc = cli(["export-weights", str(tmp_path / "missing.onnx")])
    assert proc.returncode == 2 and "no such file" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.onnx", "mlp.safetensors"]


def test_missing_safetensors_package_gives_one_clear_error(model_path, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    with pytest.raises(InvalidOptionError, match=r"pip install safetensors"):
        export_weights(model_path)
    assert not (tmp_path / "mlp.safetensors").exists()
    out = export_weights(model_path, tmp_path / "w.npz")  # npz needs no extra package
    assert set(read_weights(out)[0]) == {"w0", "b0", "w1", "b1"}


def test_rescale_export_weights_in_one_step(model_path, tmp_path, cli):
    out, weights = tmp_path / "r.onnx", tmp_path / "r.safetensors"
    proc = cli(["rescale", str(model_path), "-o", str(out), "--export-weights", str(weights)])
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {weights}" in proc.stdout
    tensors, meta = read_weights(weights)
    rescaled = float_initializers(onnx.load(out))
    for name, value in rescaled.items():
        np.testing.assert_array_equal(tensors[name], value)
    assert meta["onnxinit.model"] == str(out) and meta["onnxinit.method"] == "autoinit"

    proc = cli(["rescale", str(model_path), "-o", str(tmp_path / "s.onnx"),
                "--export-weights", str(model_path)])
    assert proc.returncode == 2 and "same file as the input MODEL" in proc.stderr
    assert not (tmp_path / "s.onnx").exists()  # refused before anything was written


def test_external_data_model_exports_its_weights(tmp_path):
    model = mlp([32, 64, 8], seed=5)
    expected = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    path = tmp_path / "ext.onnx"
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.onnx.data", size_threshold=0)
    assert (tmp_path / "ext.onnx.data").exists()
    tensors, _ = read_weights(export_weights(path))
    assert set(tensors) == set(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(tensors[name], value)


def test_the_reference_reader_reads_every_float_dtype_and_the_metadata(tmp_path):
    safetensors = pytest.importorskip("safetensors")
    rng = np.random.default_rng(0)
    arrays = {"d": rng.standard_normal((3, 2)), "f": rng.standard_normal(5).astype(np.float32),
              "h": rng.standard_normal((2, 2, 2)).astype(np.float16),
              "s": np.array(1.5, dtype=np.float32)}  # a scalar: shape []
    nodes = [helper.make_node("Identity", [name], [f"{name}_out"]) for name in arrays]
    graph = helper.make_graph(
        nodes, "g", [],
        [helper.make_tensor_value_info(f"{n}_out", helper.np_dtype_to_tensor_dtype(a.dtype),
                                       a.shape) for n, a in arrays.items()],
        [numpy_helper.from_array(a, n) for n, a in arrays.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    out = export_weights(path)
    with safetensors.safe_open(str(out), framework="np") as handle:
        assert sorted(handle.keys()) == sorted(arrays)
        for name, value in arrays.items():
            got = handle.get_tensor(name)
            assert got.dtype == value.dtype and got.shape == value.shape
            np.testing.assert_array_equal(got, value)
        assert handle.metadata()["onnxinit.model"] == str(path)
