import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxinit.graph import load
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
