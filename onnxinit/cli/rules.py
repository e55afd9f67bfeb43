"""``onnxinit rules``."""

from __future__ import annotations

import click

from ..rules import registered
from ._common import logging_options


@click.command("rules")
@logging_options
def rules_command():
    """List the op rules known, with their source (built-in or plugin).

    Ops without a rule are analysed by the empirical fallback: the node runs alone in
    onnxruntime on samples drawn from its input moments.
    """
    for reg in registered():
        domain = reg.domain or "ai.onnx"
        until = "" if reg.until is None else str(reg.until)
        versions = f"opset {reg.since}+" if not until else f"opset {reg.since}-{until}"
        click.echo(f"{domain:16} {reg.op_type:28} {versions:12} {reg.fn.__name__:24} {reg.source}")
