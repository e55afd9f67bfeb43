"""The rule registry: one rule per op and opset range, explicit overrides, plugins."""

from __future__ import annotations

import pytest

from onnxinit.rules import (
    Registration,
    RuleRegistrationError,
    RuleRegistry,
    lookup,
    registered,
)


def _first(inputs, ctx):
    return inputs


def _second(inputs, ctx):
    return inputs


def test_registering_an_op_twice_is_an_error():
    registry = RuleRegistry()
    registry.rule("MyOp", domain="com.example")(_first)
    with pytest.raises(RuleRegistrationError, match="com.example.MyOp already has the rule _first"):
        registry.rule("MyOp", domain="com.example")(_second)
    assert registry.lookup("com.example", "MyOp", 18).fn is _first


def test_an_explicit_override_takes_precedence():
    registry = RuleRegistry()
    registry.rule("Relu")(_first)
    with registry.registering_as("plugin:mine"):
        registry.rule("Relu", override=True)(_second)
    found = registry.lookup("ai.onnx", "Relu", 18)
    assert found.fn is _second and found.source == "plugin:mine"
    assert [r.fn for r in registry.registered()] == [_second]


def test_disjoint_opset_ranges_are_separate_rules():
    registry = RuleRegistry()
    registry.rule("Op", until=11)(_first)
    registry.rule("Op", since=12)(_second)
    assert registry.lookup("", "Op", 11).fn is _first
    assert registry.lookup("", "Op", 12).fn is _second
    with pytest.raises(RuleRegistrationError):
        registry.rule("Op", since=11, until=12)(_first)


def test_builtin_rules_one_per_op():
    """Loading the built-in rules raised no duplicate; the ops the issue named are where grep
    finds them (Relu has a rule of its own; Identity is the shape rule, registered once)."""
    rules = {(r.domain, r.op_type): r for r in registered()}
    assert all(isinstance(r, Registration) and r.source == "built-in" for r in rules.values())
    assert lookup("", "Relu", 18).name == "relu"
    assert lookup("", "Identity", 18).fn.__module__ == "onnxinit.rules.shape"
    assert lookup("", "Exp", 18).fn.__module__ == "onnxinit.rules.activations"
    assert lookup("", "Softmax", 18).fn.__module__ == "onnxinit.rules.softmax"
    assert lookup("", "Mul", 18).fusion and not lookup("", "Relu", 18).fusion


def test_forward_and_backward_rules_share_their_family():
    """An op with both a moment rule and a backward rule has them in modules of the same name
    (rules/X.py and autodiff/backward/X.py), and both have tests (tests/rules/test_X.py,
    tests/autodiff/test_backward_X.py)."""
    from pathlib import Path

    from onnxinit.autodiff.backward import RULES

    tests = Path(__file__).resolve().parents[1]
    families = set()
    for op, backward_rule in RULES.items():
        forward = lookup("", op, 18)
        if forward is None:
            continue
        family = backward_rule.__module__.rpartition(".")[2]
        assert forward.fn.__module__.rpartition(".")[2] == family, op
        families.add(family)
    for family in families:
        assert (tests / "rules" / f"test_{family}.py").exists(), family
        assert (tests / "autodiff" / f"test_backward_{family}.py").exists(), family
