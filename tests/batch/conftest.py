"""A tiny model zoo for the batch tests: good models of two architectures (fast to check, one
of them failing the gate) and a corrupt file."""

from __future__ import annotations

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
