"""data_source: --data .npz validation (every error), determinism, synthetic fallback."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit import data as data_module
from onnxinit.data import data_source
from onnxinit.errors import InvalidOptionError
from onnxinit.graph import load
from onnxinit.methods._data import DataOptions, LossOptions, batches

from .models import make_model, mlp

N = 40  # samples in the files written here


@pytest.fixture
def mlp_graph():
    return load(mlp([4, 8, 3]), batch_size=8)


@pytest.fixture
def token_graph():
    """ids int64 [N, 5] -> Gather(table[20, 4]) -> ReduceMean over positions -> MatMul [4, 3]."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((20, 4)).astype(np.float32), "table"),
             numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([1], np.int64), "axes")]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"]),
             helper.make_node("ReduceMean", ["e", "axes"], ["m"], keepdims=0),
             helper.make_node("MatMul", ["m", "w"], ["y"])]
    model = make_model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 5])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    return load(model, batch_size=8)


def _write(tmp_path, **arrays):
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return str(path)


def _good(n=N):
    rng = np.random.default_rng(1)
    return {"x": rng.standard_normal((n, 4)).astype(np.float32), "labels": np.arange(n) % 3}


def _error(graph, path, **kw) -> str:
    kw.setdefault("batch_size", 8)
    kw.setdefault("seed", 0)
    with pytest.raises(InvalidOptionError) as info:
        data_source(graph, path, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


# errors -----------------------------------------------------------------------------------------


def test_missing_file(mlp_graph, tmp_path):
    assert "no such file" in _error(mlp_graph, str(tmp_path / "nope.npz"))


def test_not_npz(mlp_graph, tmp_path):
    text = tmp_path / "data.npz"
    text.write_text("x,labels\n1,2\n")
    assert "not a NumPy .npz archive" in _error(mlp_graph, str(text))
    npy = tmp_path / "data.npy"
    np.save(npy, np.zeros((N, 4), np.float32))
    assert "not an .npz archive" in _error(mlp_graph, str(npy))


def test_missing_input_names_it_and_lists_the_file(mlp_graph, tmp_path):
    path = _write(tmp_path, images=np.zeros((N, 4), np.float32), labels=np.zeros(N, np.int64))
    message = _error(mlp_graph, path)
    assert "model input(s) x" in message and "images, labels" in message


def test_wrong_shape(mlp_graph, tmp_path):
    arrays = _good()
    arrays["x"] = np.zeros((N, 5), np.float32)
    assert "'x' has shape (40, 5)" in _error(mlp_graph, _write(tmp_path, **arrays))
    arrays["x"] = np.zeros((N, 2, 2), np.float32)
    assert "(samples, 4)" in _error(mlp_graph, _write(tmp_path, **arrays))


def test_dtypes(mlp_graph, token_graph, tmp_path):
    # float64 and uint8 values for a float input are cast
    for dtype in (np.float64, np.uint8):
        arrays = _good()
        arrays["x"] = arrays["x"].astype(dtype)
        batch = data_source(mlp_graph, _write(tmp_path, **arrays), batch_size=8, seed=0).batch(0)
        assert batch.feeds["x"].dtype == np.float32
    # floats where integer ids are expected are refused; int32 ids are cast to int64
    ids = np.random.default_rng(0).integers(0, 20, (N, 5))
    message = _error(token_graph, _write(tmp_path, ids=ids.astype(np.float32), labels=ids[:, 0] % 3))
    assert "dtype float32 where int64 is expected" in message
    path = _write(tmp_path, ids=ids.astype(np.int32), labels=ids[:, 0] % 3)
    assert data_source(token_graph, path, batch_size=8, seed=0).batch(0).feeds["ids"].dtype == np.int64
    # a string array is refused as well
    arrays = _good()
    arrays["x"] = np.full((N, 4), "a")
    assert "where float32 is expected" in _error(mlp_graph, _write(tmp_path, **arrays))


def test_too_few_samples(mlp_graph, tmp_path):
    message = _error(mlp_graph, _write(tmp_path, **_good(5)))
    assert "5 samples, fewer than the batch size 8" in message


def test_sample_counts_disagree(mlp_graph, tmp_path):
    arrays = _good()
    arrays["labels"] = arrays["labels"][:-1]
    assert "disagree on the number of samples" in _error(mlp_graph, _write(tmp_path, **arrays))


def test_labels(mlp_graph, tmp_path):
    arrays = _good()
    del arrays["labels"]
    assert "needs an array 'labels'" in _error(mlp_graph, _write(tmp_path, **arrays))
    arrays["labels"] = np.arange(N) % 4  # the output has 3 classes
    message = _error(mlp_graph, _write(tmp_path, **arrays))
    assert "labels span [0, 3]" in message and "3 classes" in message
    arrays["labels"] = -(np.arange(N) % 2)
    assert "labels span [-1, 0]" in _error(mlp_graph, _write(tmp_path, **arrays))
    arrays["labels"] = (np.arange(N) % 3).astype(np.float32)
    assert "class ids must be integers" in _error(mlp_graph, _write(tmp_path, **arrays))
    arrays["labels"] = np.zeros((N, 3), np.int64)
    assert "'labels' has shape (40, 3)" in _error(mlp_graph, _write(tmp_path, **arrays))


def test_targets_for_mse(mlp_graph, tmp_path):
    arrays = _good()
    message = _error(mlp_graph, _write(tmp_path, **arrays), loss="mse")
    assert "needs an array 'targets'" in message
    arrays["targets"] = np.zeros((N, 2), np.float64)
    assert "(samples, 3)" in _error(mlp_graph, _write(tmp_path, **arrays), loss="mse")
    arrays["targets"] = np.ones((N, 3), np.float64)
    source = data_source(mlp_graph, _write(tmp_path, **arrays), batch_size=8, seed=0, loss="mse")
    assert source.batch(0).labels.dtype == np.float32 and source.batch(0).labels.shape == (8, 3)


def test_bad_options(mlp_graph, tmp_path):
    path = _write(tmp_path, **_good())
    assert "--loss must be one of" in _error(mlp_graph, path, loss="hinge")
    assert "--loss-output 'logits' is not an output" in _error(mlp_graph, path, loss_output="logits")
    assert "at least 1" in _error(mlp_graph, path, batch_size=0)


def test_fixed_batch_dimension(tmp_path):
    graph = load(mlp([4, 8, 3], dynamic_batch=False))  # declared batch 4
    assert "fixed batch size 4" in _error(graph, None, batch_size=8)
    assert data_source(graph, None, batch_size=4, seed=0).batch(0).feeds["x"].shape == (4, 4)


# batches ----------------------------------------------------------------------------------------


def test_file_batches_are_deterministic_and_cover_each_epoch(mlp_graph, tmp_path):
    arrays = _good()
    arrays["x"][:, 0] = np.arange(N)  # sample id in the first column
    path = _write(tmp_path, **arrays)
    source = data_source(mlp_graph, path, batch_size=8, seed=3)
    again = data_source(mlp_graph, path, batch_size=8, seed=3)
    assert not source.synthetic
    for index in (0, 4, 7):
        a, b = source.batch(index), again.batch(index)
        np.testing.assert_array_equal(a.feeds["x"], b.feeds["x"])
        np.testing.assert_array_equal(a.labels, b.labels)
    ids = [source.batch(i).feeds["x"][:, 0].astype(int) for i in range(5)]  # one epoch
    assert sorted(np.concatenate(ids)) == list(range(N))
    for batch_ids, i in zip(ids, range(5)):  # labels travel with their samples
        np.testing.assert_array_equal(source.batch(i).labels, batch_ids % 3)
    second_epoch = np.concatenate([source.batch(i).feeds["x"][:, 0] for i in range(5, 10)])
    assert not np.array_equal(np.concatenate(ids), second_epoch)  # reshuffled
    other = data_source(mlp_graph, path, batch_size=8, seed=4).batch(0).feeds["x"]
    assert not np.array_equal(other, source.batch(0).feeds["x"])


def test_synthetic_batches(mlp_graph, token_graph):
    source = data_source(mlp_graph, None, batch_size=16, seed=5)
    assert source.synthetic
    a, b = source.batch(2), data_source(mlp_graph, None, batch_size=16, seed=5).batch(2)
    np.testing.assert_array_equal(a.feeds["x"], b.feeds["x"])
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.feeds["x"].shape == (16, 4) and a.labels.shape == (16,)
    assert a.labels.dtype == np.int64 and 0 <= a.labels.min() and a.labels.max() < 3
    assert not np.array_equal(a.feeds["x"], source.batch(3).feeds["x"])
    big = data_source(mlp_graph, None, batch_size=4000, seed=0).batch(0)
    assert set(np.unique(big.labels)) == {0, 1, 2}
    assert abs(big.feeds["x"].var() - 1) < 0.05
    ids = data_source(token_graph, None, batch_size=64, seed=0).batch(0).feeds["ids"]
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() == 19
    mse = data_source(mlp_graph, None, batch_size=8, seed=0, loss="mse").batch(0)
    assert mse.labels.shape == (8, 3) and mse.labels.dtype == np.float32
    assert data_source(mlp_graph, None, batch_size=8, seed=0, loss="output").batch(0).labels is None


def test_one_notice_without_data(mlp_graph, tmp_path):
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("onnxinit.data")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.WARNING)  # whatever an earlier --quiet left on the parent logger
    data_module._NOTICE["shown"] = False
    try:
        data_source(mlp_graph, None, batch_size=8, seed=0)
        data_source(mlp_graph, None, batch_size=8, seed=1)
        data_source(mlp_graph, _write(tmp_path, **_good()), batch_size=8, seed=0)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert len(records) == 1 and "real data" in records[0].getMessage()


def test_data_options_drive_batches(mlp_graph, tmp_path):
    path = _write(tmp_path, **_good())
    source = batches(mlp_graph, DataOptions(data=path), seed=2)
    assert not source.synthetic and source.batch(0).feeds["x"].shape == (8, 4)
    assert batches(mlp_graph, LossOptions(loss="output")).batch(0).labels is None
    assert batches(mlp_graph, LossOptions()).batch(0).labels is not None
    assert batches(mlp_graph, DataOptions()).batch(0).labels is None  # lsuv: no loss


def test_methods_use_the_resolved_batch_size():
    fixed = load(mlp([4, 8, 3], dynamic_batch=False), batch_size=32)  # declared batch 4
    assert batches(fixed, DataOptions()).batch(0).feeds["x"].shape == (4, 4)
    given = load(mlp([4, 8, 3]), input_shapes={"x": (6, 4)}, batch_size=32)
    assert batches(given, DataOptions()).batch(0).feeds["x"].shape == (6, 4)
    assert batches(given, DataOptions(), batch_size=10).batch(0).feeds["x"].shape == (10, 4)
