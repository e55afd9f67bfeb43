"""Framework imports for the adapter tests: skip when a framework is not installed, fail instead
when ``ONNXINIT_REQUIRE_<NAME>=1`` (``.ci/framework_venvs`` sets it where it installed one)."""

from __future__ import annotations

import importlib
import os

import pytest


def require(module: str, name: str | None = None):
    """Import ``module`` or skip; with ``ONNXINIT_REQUIRE_<NAME>=1`` (``name`` defaults to the
    module's top-level package, e.g. ``TF2ONNX``) a failed import fails the test."""
    flag = f"ONNXINIT_REQUIRE_{(name or module.partition('.')[0]).upper()}"
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if os.environ.get(flag) == "1":
            pytest.fail(f"{flag}=1 but {module} cannot be imported ({exc})", pytrace=False)
        pytest.skip(f"{module} is not installed (set {flag}=1 to fail instead)",
                    allow_module_level=True)
