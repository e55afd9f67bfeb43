import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.graph import load
from onnxinit.errors import UnsupportedModelError
from onnxinit.measure import measure

from .models import make_model


def _bn_model(training_mode: int, with_stat_outputs: bool):
    c = 3
    inits = [
        numpy_helper.from_array(np.ones(c, np.float32), "gamma"),
        numpy_helper.from_array(np.zeros(c, np.float32), "beta"),
        numpy_helper.from_array(np.zeros(c, np.float32), "running_mean"),
        numpy_helper.from_array(np.ones(c, np.float32), "running_var"),
    ]
    outputs = ["y", "rm", "rv"] if with_stat_outputs else ["y"]
    node = helper.make_node("BatchNormalization", ["x", "gamma", "beta", "running_mean", "running_var"],
                            outputs, training_mode=training_mode)
    return make_model(
        [node],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", c, 4, 4])],
        inits,
    )


def test_batchnorm_measured_with_batch_statistics():
    """Input mean 3, var 25: running statistics (0, 1) would give mean 3, var 25; batch
    statistics give mean 0, var 1 — whatever training_mode the export wrote (docs/design.md §4)."""
    for training_mode, stat_outputs in ((1, False), (1, True), (0, False)):
        graph = load(_bn_model(training_mode, stat_outputs), batch_size=64)
        x = (np.random.default_rng(0).standard_normal((64, 3, 4, 4)) * 5 + 3).astype(np.float32)
        mean, var = measure(graph, {"x": x})["y"]
        assert abs(mean) < 1e-5 and abs(var - 1) < 1e-3, (training_mode, mean, var)


def _conv_on(size: int):
    w = numpy_helper.from_array(np.full((4, 3, 3, 3), 0.1, np.float32), "w")
    return make_model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, size, size])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])


def test_measured_bytes_counts_what_one_run_holds():
    """x drawn in float64 (2*3*10*10 * 8 bytes) and y as onnxruntime returns it (float32)."""
    from onnxinit.measure import measured_bytes

    assert measured_bytes(load(_conv_on(10))) == 2 * 3 * 100 * 8 + 2 * 4 * 100 * 4


def test_a_measurement_larger_than_memory_is_refused_before_drawing(tmp_path, capsys):
    """A 2x3x100000x100000 input (480 GB in float64): exit 2 with one line, no MemoryError."""
    import onnx

    from .cli import assert_one_line_error, run

    path = tmp_path / "huge.onnx"
    onnx.save(_conv_on(100_000), path)
    assert_one_line_error(*run(["analyze", str(path), "--measure"], capsys),
                          "measuring holds", "--batch-size")


def test_model_onnxruntime_cannot_run_is_a_clear_error():
    # onnxruntime has no float64 Conv kernel: measuring was an "internal error"
    w = numpy_helper.from_array(np.full((2, 3, 3, 3), 0.1), "w")
    model = make_model([helper.make_node("Conv", ["x", "w"], ["y"])],
                       [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [2, 3, 8, 8])],
                       [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)], [w])
    graph = load(model)
    with pytest.raises(UnsupportedModelError, match="onnxruntime cannot run this model"):
        measure(graph, {"x": np.zeros((2, 3, 8, 8))})


def test_bfloat16_tensors_and_scalars_are_left_out():
    # numpy has no bfloat16 (onnxruntime could not hand the tensor back), and one element has
    # no spread to compare a variance with; the other tensors are measured
    model = make_model(
        [helper.make_node("Cast", ["x"], ["b"], to=TensorProto.BFLOAT16),
         helper.make_node("Cast", ["b"], ["f"], to=TensorProto.FLOAT),
         helper.make_node("ReduceMean", ["f"], ["s"], keepdims=0)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 8])],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, [])])
    graph = load(model)
    measured = measure(graph, {"x": np.random.default_rng(0).standard_normal((64, 8))
                               .astype(np.float32)})
    assert "b" not in measured and "s" not in measured
    assert abs(measured["f"][1] - 1) < 0.2
