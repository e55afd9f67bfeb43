"""Strict mode (onnxinit/strict.py): a rule's unexpected error is raised under
``ONNXINIT_STRICT=1`` (the suite's setting) and falls back to a measurement without it."""

from __future__ import annotations

import numpy as np
import pytest

from onnxinit import propagate as propagate_module
from onnxinit.graph import load
from onnxinit.propagate import propagate
from onnxinit.rules import RuleError
from onnxinit.rules.registry import Registration
from onnxinit.strict import ENVIRONMENT_VARIABLE, fall_back

from .models import mlp


def _broken_relu(monkeypatch, error: Exception):
    """Every Relu's rule raises ``error``; the other ops keep theirs."""
    real = propagate_module.lookup

    def rule(inputs, ctx):
        raise error

    def lookup(domain, op_type, opset):
        if op_type == "Relu":
            return Registration("", "Relu", 1, None, rule, "test", False)
        return real(domain, op_type, opset)

    monkeypatch.setattr(propagate_module, "lookup", lookup)


def test_the_suite_runs_strict():
    import os

    assert os.environ.get(ENVIRONMENT_VARIABLE) == "1"


def test_a_rule_bug_is_raised_in_strict_mode(monkeypatch):
    _broken_relu(monkeypatch, IndexError("a bug"))
    graph = load(mlp([16, 16, 16], seed=1), batch_size=64)
    with pytest.raises(IndexError, match="a bug"):
        propagate(graph)


def test_a_rule_bug_is_measured_instead_outside_strict_mode(monkeypatch):
    expected = propagate(load(mlp([16, 16, 16], seed=1), batch_size=64))
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, "0")
    _broken_relu(monkeypatch, IndexError("a bug"))
    result = propagate(load(mlp([16, 16, 16], seed=1), batch_size=64))
    relus = [f for f in result.fallbacks if f.op == "Relu"]
    assert relus and all("IndexError: a bug" in f.reason for f in relus)
    # the measurement (onnxruntime) stands in for the rule: close to the rule's own prediction
    for name, m in expected.moments.items():
        var = m.total()[1]
        if var > 0:
            np.testing.assert_allclose(result.moments[name].total()[1], var, rtol=0.35)


def test_a_rules_own_refusal_is_never_raised(monkeypatch):
    _broken_relu(monkeypatch, RuleError("cannot handle this node"))
    result = propagate(load(mlp([16, 16, 16], seed=1), batch_size=64))
    assert any(f.op == "Relu" and "cannot handle" in f.reason for f in result.fallbacks)


def test_fall_back_keeps_expected_types_and_raises_the_rest(monkeypatch):
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, "1")
    fall_back(FloatingPointError("overflow"), (FloatingPointError,))
    with pytest.raises(KeyError):
        fall_back(KeyError("x"))
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, "0")
    fall_back(KeyError("x"))
