"""Imported once by the forkserver that ``--jobs`` forks each model's process from (see
:mod:`onnxinit.batch.local`): importing this module imports the work of every command and
loads the op rules, so that a forked process starts with them in memory. It has no other use.
"""

from __future__ import annotations

from ..rules.catalog import load_rules
from . import work  # noqa: F401 - imported for the forked processes

load_rules()
