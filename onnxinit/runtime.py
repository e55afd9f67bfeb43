"""onnxruntime sessions and device choice.

The CUDA provider is requested only when it can actually load: onnxruntime-gpu lists
``CUDAExecutionProvider`` as available even on machines without CUDA libraries and then logs an
error for every session. We probe once, with logging silenced, and fall back to the CPU.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from importlib import metadata

import numpy as np
import onnx

from .errors import InvalidOptionError, OnnxInitError
from .initializers import as_external, external_arrays

ONNXRUNTIME_BUILDS = ("onnxruntime", "onnxruntime-gpu")


class MissingRuntimeError(OnnxInitError):
    """onnxruntime is absent, or both of its builds are installed (they overwrite each other's
    files in one ``onnxruntime`` package)."""


def _installed(distribution: str) -> bool:
    try:
        metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def require_onnxruntime() -> None:
    """Refuse to run without exactly one onnxruntime build (checked once)."""
    builds = [d for d in ONNXRUNTIME_BUILDS if _installed(d)]
    if len(builds) > 1:
        raise MissingRuntimeError(
            "both onnxruntime and onnxruntime-gpu are installed; they write the same package "
            "and break each other: pip uninstall -y onnxruntime onnxruntime-gpu, then "
            "pip install 'onnxinit[cpu]' (or 'onnxinit[gpu]' for CUDA)")
    try:
        import onnxruntime  # noqa: F401 - imported here, on first use, not with onnxinit
    except ImportError:  # installed by onnxinit[cpu] or onnxinit[gpu]
        raise MissingRuntimeError(
            "onnxruntime is not installed: pip install 'onnxinit[cpu]' (or 'onnxinit[gpu]' "
            "for CUDA)") from None


DEVICES = ("auto", "cpu", "cuda")


def onnxruntime():
    """The onnxruntime module, imported on first use (it takes longer to import than numpy:
    commands that never run a model do not pay for it); MissingRuntimeError without exactly one
    of its builds (:func:`require_onnxruntime`)."""
    require_onnxruntime()
    import onnxruntime as ort

    return ort


def _nvidia_device_present() -> bool:
    return os.path.exists("/dev/nvidia0") or os.path.exists("/proc/driver/nvidia/version")


@functools.lru_cache(maxsize=1)
def cuda_usable() -> bool:
    """True when a session with the CUDA provider really runs on the GPU (probed quietly, once)."""
    ort = onnxruntime()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    if not _nvidia_device_present():
        return False
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    ort.set_default_logger_severity(4)
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 4
        session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CUDAExecutionProvider"]
        )
        return "CUDAExecutionProvider" in session.get_providers()
    except Exception:  # noqa: BLE001 - any failure to load the provider: no usable CUDA
        return False
    finally:
        ort.set_default_logger_severity(2)


def providers(device: str = "auto") -> list[str]:
    """Execution providers for ``device`` ('auto', 'cpu' or 'cuda')."""
    if device not in DEVICES:
        raise InvalidOptionError(f"--device must be one of {', '.join(DEVICES)}, not {device!r}")
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if cuda_usable():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise InvalidOptionError(
            "--device cuda: the CUDA execution provider cannot load on this machine "
            "(onnxruntime-gpu needs an NVIDIA GPU with CUDA and cuDNN libraries)"
        )
    return ["CPUExecutionProvider"]


def make_session(
    model: onnx.ModelProto | bytes | str,
    *,
    device: str = "auto",
    optimize: bool = True,
    threads: int | None = None,
    provider_list: Sequence[str] | None = None,
) -> onnxruntime.InferenceSession:
    """An InferenceSession for ``model`` (a ModelProto, its bytes, or a path).

    ``optimize=False`` disables graph optimizations, which is needed whenever training-mode
    BatchNormalization must keep batch statistics (docs/design.md §4).
    """
    ort = onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 4  # its errors are raised (and reported); none printed
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
    data = model if isinstance(model, (bytes, str)) else model.SerializeToString()
    if isinstance(model, onnx.ModelProto):
        # external tensors are handed over from their memory maps (the bytes carry no folder)
        external = external_arrays(model)
        if external:
            data = as_external(model).SerializeToString()
            options.add_external_initializers(
                list(external),
                [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a))
                 for a in external.values()])
    return ort.InferenceSession(
        data, options, providers=list(provider_list or providers(device))
    )
