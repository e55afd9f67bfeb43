"""The committed sample models (sample_models/). A missing one is a broken checkout, not a
reason to skip: :func:`sample` fails the test that needs it."""

from __future__ import annotations

from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def sample(name: str) -> Path:
    """``sample_models/<name>.onnx``; the calling test fails when it is missing."""
    path = SAMPLES / f"{name}.onnx"
    if not path.is_file():
        pytest.fail(f"committed fixture {path} is missing (regenerate it with "
                    "python sample_models/build.py)", pytrace=False)
    return path
