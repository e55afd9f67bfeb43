"""The sample models in sample_models/: float64 gradients agree with central differences of the
loss on a handful of random parameter entries (skipped for models not present)."""


import numpy as np
import onnx
import pytest

from onnxinit.autodiff import GradientProgram
from onnxinit.runtime import make_session

from ..samples import sample

NAMES = ["resnet20_bn", "resnet20_nobn", "small_cnn", "tanh_mlp50", "transformer_postln"]
ENTRIES = 4
BATCH = 2


def _feeds(model: onnx.ModelProto, rng):
    initializers = {init.name: init for init in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else BATCH for d in tensor_type.shape.dim]
        if tensor_type.elem_type == onnx.TensorProto.FLOAT:
            feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
        else:
            upper = min(_embedding_rows(model, value.name, initializers) or 2, 1000)
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
            feeds[value.name] = rng.integers(0, upper, shape).astype(dtype)
    return feeds


def _embedding_rows(model, name, initializers):
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == name:
            table = initializers.get(node.input[0])
            return table.dims[0] if table is not None else None
    return None


@pytest.mark.parametrize("name", NAMES)
def test_sample_model_gradients_match_finite_differences(name):
    path = sample(name)
    model = onnx.load(str(path))
    rng = np.random.default_rng(0)
    feeds = _feeds(model, rng)
    shapes = {k: v.shape for k, v in feeds.items()}
    output_shape = make_session(model).run(None, feeds)[0].shape
    targets = rng.standard_normal(output_shape)
    program = GradientProgram(model, shapes, loss="mse", dtype="float64")
    _, grads = program.gradients(feeds, targets)
    names = [n for n in program.wrt if np.abs(grads[n]).max() > 0]
    for param in rng.choice(names, size=min(ENTRIES, len(names)), replace=False):
        base = program.parameters[param]
        candidates = np.flatnonzero(np.abs(grads[param]) > 1e-3 * np.abs(grads[param]).max())
        index = np.unravel_index(rng.choice(candidates), base.shape)
        step = 1e-6 * (1.0 + abs(base[index]))
        shifted = []
        for sign in (1, -1):
            value = base.copy()
            value[index] += sign * step
            shifted.append(program.loss(feeds, targets, {param: value}))
        numeric = (shifted[0] - shifted[1]) / (2 * step)
        assert numeric == pytest.approx(grads[param][index], rel=1e-5, abs=1e-9), (param, index)
