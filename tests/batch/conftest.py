"""A tiny model zoo for the batch tests (good models of two architectures, fast to check, one
of them failing the gate, and a corrupt file), and a local Ray instance per test module.

Ray tests skip when ray is not installed, and fail instead when ONNXINIT_REQUIRE_RAY=1 (CI)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnx
import pytest

from ..models import mlp

GOOD = ("a.onnx", "b.onnx", "c.onnx", "d.onnx")


def write_zoo(folder: Path) -> list[str]:
    """a-d: small MLPs (c explodes: it fails the check), bad.onnx: not ONNX; in this order."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(GOOD):
        scale = 3.0 if name == "c.onnx" else None  # 9x variance per layer: exploding
        onnx.save(mlp([8, 16, 16, 16, 4], activation="Tanh" if i % 2 else "Relu", seed=i,
                      scale=scale), str(folder / name))
    (folder / "bad.onnx").write_bytes(b"this is not an ONNX model\n")
    return [str(folder / n) for n in ("a.onnx", "b.onnx", "bad.onnx", "c.onnx", "d.onnx")]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> list[str]:
    return write_zoo(tmp_path_factory.mktemp("zoo"))


REQUIRE_RAY = os.environ.get("ONNXINIT_REQUIRE_RAY") == "1"


def require(module: str):
    """Import ``module`` (ray, ray.tune), or skip (fail with ONNXINIT_REQUIRE_RAY=1)."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        if REQUIRE_RAY:
            pytest.fail(f"ONNXINIT_REQUIRE_RAY=1 but {module} cannot be imported ({exc}): "
                        "pip install 'onnxinit[tune]'")
        pytest.skip(f"{module} is not installed (set ONNXINIT_REQUIRE_RAY=1 to fail instead)")


@pytest.fixture(scope="module")
def ray_instance():
    """A local Ray instance for the module's tests: 2 CPUs, a 200 MB object store, no
    dashboard, workers' logs kept out of the test output."""
    ray = require("ray")
    ray.init(num_cpus=2, object_store_memory=200 * 1024**2, include_dashboard=False,
             log_to_driver=False, logging_level=logging.ERROR)
    yield ray
    ray.shutdown()
