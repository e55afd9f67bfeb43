"""``onnxinit rules``."""

from __future__ import annotations

import inspect
import logging

import click

from ..errors import InvalidOptionError
from ..rules import registered
from ._common import echo, logging_options

log = logging.getLogger("onnxinit")

HEADER = ("domain", "op", "opsets", "rule", "source")


def _row(reg) -> tuple[str, ...]:
    versions = f"{reg.since}+" if reg.until is None else f"{reg.since}-{reg.until}"
    return (reg.domain or "ai.onnx", reg.op_type, versions, reg.fn.__name__, reg.source)


def table(rows: list[tuple[str, ...]]) -> str:
    """Left-aligned columns as wide as their longest cell (nothing is cut)."""
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


@click.command("rules")
@click.argument("ops", nargs=-1, metavar="[OP]...")
@logging_options
def rules_command(ops):
    """List the op rules known, with their source (built-in or plugin); with OP, show the rule
    of each OP named and its formula.

    Ops without a rule are analysed by the empirical fallback: the node runs alone in
    onnxruntime on samples drawn from its input moments.

    \b
    Examples:
      onnxinit rules
      onnxinit rules Conv Softmax
    """
    regs = registered()
    plugins = sum(r.source != "built-in" for r in regs)
    log.info("%d op rules registered: %d built-in, %d from plugins", len(regs),
             len(regs) - plugins, plugins)
    if not ops:
        echo(table([HEADER] + [_row(r) for r in regs]))
        return
    by_op = {}
    for reg in regs:
        by_op.setdefault(reg.op_type.lower(), []).append(reg)
    unknown = [op for op in ops if op.lower() not in by_op]
    if unknown:
        raise InvalidOptionError(
            f"no rule for {', '.join(unknown)} (such ops are analysed by the empirical "
            "fallback; `onnxinit rules` lists the ops that have one)")
    blocks = []
    for op in ops:
        for reg in by_op[op.lower()]:
            doc = inspect.getdoc(reg.fn) or "(no docstring)"
            blocks.append(table([HEADER, _row(reg)]) + "\n\n" + doc)
    echo("\n\n".join(blocks))
