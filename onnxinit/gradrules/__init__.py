"""Backward moment rules: the statistics of dL/dx at initialization, op by op, from the
gradient statistics of a node's outputs and the forward moments (the backward counterpart of
:mod:`onnxinit.rules`; module names mirror it). See :mod:`.registry` for a rule's signature and
:mod:`onnxinit.backward` for the sweep that calls them."""

from __future__ import annotations

from .catalog import load_rules, lookup, registered
from .context import GradContext
from .gradient import Gradient, add, along
from .loss import LOSSES, loss_gradient
from .registry import REGISTRY, rule

__all__ = ["LOSSES", "REGISTRY", "GradContext", "Gradient", "add", "along", "load_rules",
           "lookup", "loss_gradient", "registered", "rule"]
