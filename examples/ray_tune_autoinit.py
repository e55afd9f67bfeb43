"""Neural-architecture search with Ray Tune: each trial's candidate network is initialized with
AutoInit (``onnxinit.batch.rescale_many``) before it would train.

Every trial exports its candidate to ONNX (here an MLP built with onnx.helper, standing in for
``torch.onnx.export(..., training=torch.onnx.TrainingMode.TRAINING)``), rescales it with
autoinit, and reports the variance of the network's output measured in onnxruntime on Gaussian
inputs: about 1 for every depth and width after autoinit, where the exported initialization
(N(0, 1) weights) grows it with depth. A real search would train from
``result.payload["output"]`` (PyTorch: ``onnxinit.adapters.torch.load_into``) and report its
validation loss instead. ``rescale_many`` here runs in the trial's own process; give it
``timeout=SECONDS`` to run it in a process of its own that is killed past the limit.

    pip install 'onnxinit[tune]'        # ray[tune]: Ray with pandas and pyarrow
    python examples/ray_tune_autoinit.py
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import ray
from onnx import TensorProto, helper, numpy_helper
from ray import tune

from onnxinit.batch import rescale_many

INPUTS = 16


def export_candidate(depth: int, width: int, path: Path) -> Path:
    """A ReLU MLP with N(0, 1) weights and a linear last layer (a framework's export would be
    here)."""
    rng = np.random.default_rng(depth * 1000 + width)
    nodes, inits, x, fan_in = [], [], "x", INPUTS
    for i in range(depth):
        w = rng.standard_normal((width, fan_in)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"fc{i}.weight"),
                  numpy_helper.from_array(np.zeros(width, np.float32), f"fc{i}.bias")]
        nodes.append(helper.make_node("Gemm", [x, f"fc{i}.weight", f"fc{i}.bias"], [f"h{i}"],
                                      transB=1))
        x, fan_in = f"h{i}", width
        if i < depth - 1:
            nodes.append(helper.make_node("Relu", [x], [f"a{i}"]))
            x = f"a{i}"
    graph = helper.make_graph(
        nodes, "candidate", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                           ["N", INPUTS])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", width])], inits)
    onnx.save(helper.make_model(graph, ir_version=8,
                                opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def output_variance(path: str) -> float:
    """The variance of the model's output on a batch of standard Gaussian inputs."""
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((512, INPUTS)).astype(np.float32)
    return float(session.run(None, {"x": x})[0].var())


def trainable(config: dict) -> None:
    """One trial: export, initialize with autoinit, (train,) report."""
    with tempfile.TemporaryDirectory(prefix="trial-") as folder:
        model = export_candidate(config["depth"], config["width"], Path(folder) / "candidate.onnx")
        result = next(rescale_many([str(model)], "autoinit"))
        if result.status != "ok":
            tune.report({"output_var": float("nan"), "error": result.error})
            return
        tune.report({"output_var": output_variance(result.payload["output"]),
                     "exported_var": output_variance(str(model)),
                     "init_seconds": result.seconds})

def search(storage: str) -> list[dict]:
    """A 2 x 2 grid of depths and widths; one row per trial."""
    tuner = tune.Tuner(
        trainable,
        param_space={"depth": tune.grid_search([2, 8]), "width": tune.grid_search([32, 128])},
        run_config=tune.RunConfig(storage_path=storage, verbose=0),
    )
    return [{**r.config, **r.metrics} for r in tuner.fit()]


if __name__ == "__main__":
    ray.init(num_cpus=2, object_store_memory=200 * 1024**2, include_dashboard=False,
             log_to_driver=False, logging_level=logging.ERROR)
    with tempfile.TemporaryDirectory() as storage:
        for row in search(storage):
            print(f"depth {row['depth']:>2} width {row['width']:>3}: output variance "
                  f"{row['exported_var']:10.4g} exported -> {row['output_var']:.3f} after "
                  f"autoinit ({row['init_seconds']:.2f} s)")
    ray.shutdown()
