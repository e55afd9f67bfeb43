"""Strings from a model (node, tensor, op and file names) made safe to print.

A model is data from anyone: a node named ``"h\\n::error file=evil.py::x"`` printed as is starts
a new log line that a GitHub Actions runner reads as a workflow command, ``##[warning]`` anywhere
in a line triggers the runner's legacy command syntax, and terminal escape sequences rewrite what
a reader sees. Every output of onnxinit passes model strings through one of these:

- :func:`text` for human-readable lines: control characters (C0, DEL, C1, line and paragraph
  separators, bidirectional overrides) become ``\\n``, ``\\xNN`` or ``\\uNNNN``, ``##[`` becomes
  ``#\\x23[``, and a line that would start with ``::`` starts with ``\\x3a:``. Idempotent.
- :func:`dumps` for JSON and SARIF: ``json.dumps`` with every non-ASCII and control character
  escaped, and ``#`` of ``##[`` written as ``\\u0023``; the decoded strings are unchanged.
- :func:`github_data` / :func:`github_property` for the message and the properties of a
  workflow command.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata

_BIDI = {"\u200e", "\u200f", "\u061c", *map(chr, range(0x202A, 0x202F)),
         *map(chr, range(0x2066, 0x206A))}


def _unsafe(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Zl", "Zp") or ch in _BIDI


_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _code(ch: str) -> str:
    if ch in _SHORT:
        return _SHORT[ch]
    n = ord(ch)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}"


_LEADING_COMMAND = re.compile(r"^(\s*):", re.MULTILINE)


def text(value: object) -> str:
    """``value`` as one printable, inert piece of a log line (see the module docstring)."""
    s = str(value)
    # every unsafe character is non-printable (categories Cc, Zl, Zp, and Cf for the bidi
    # marks): a printable string skips the per-character check
    if not s.isprintable() and any(_unsafe(ch) for ch in s):
        s = "".join(_code(ch) if _unsafe(ch) else ch for ch in s)
    s = s.replace("##[", "#\\x23[")
    if s.lstrip().startswith("::"):
        s = _LEADING_COMMAND.sub(r"\1\\x3a", s, count=1)
    return s


def lines(value: str) -> str:
    """Several lines of human-readable output, each made safe by :func:`text` (the line breaks
    themselves are kept)."""
    return "\n".join(text(line) for line in str(value).split("\n"))


def _finite(obj):
    """``obj`` with every non-finite float written as the string "inf", "-inf" or "nan" (JSON
    has no literal for them) and numpy scalars as Python numbers."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "shape", None) == ():
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def dumps(obj, **kwargs) -> str:
    """JSON text of ``obj`` that no log reader mistakes for a command (strings decode
    unchanged; non-finite floats become "inf"/"-inf"/"nan")."""
    out = json.dumps(_finite(obj), ensure_ascii=True, allow_nan=False, **kwargs)
    return out.replace("##[", "\\u0023#[")


def github_data(value: object) -> str:
    """The message of a workflow command (after ``::``): safe text, then the runner's escapes."""
    return text(value).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


_PROPERTY = {"%": "%25", "\r": "%0D", "\n": "%0A", ":": "%3A", ",": "%2C"}


def github_property(value: object) -> str:
    """A property value of a workflow command (``file=``, ``title=``): the runner's escapes,
    which it undoes, so ``file=`` names the real file (a line break in a file name included);
    other control characters as in :func:`text`. ``##[`` needs nothing here: a line that
    starts with ``::`` is read as a command of that form, never of the legacy one."""
    return "".join(_PROPERTY.get(ch) or (_code(ch) if _unsafe(ch) else ch) for ch in str(value))
