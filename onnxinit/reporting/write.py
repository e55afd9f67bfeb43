"""The report from Python: an :class:`~onnxinit.analysis.Analysis` (and one of its rescaled
copy) to an HTML page or a plot file."""

from __future__ import annotations

import os
from pathlib import Path

from ..analysis import Analysis
from ..atomic import write_atomically
from .content import build
from .html import document
from .plot import render, write_plot


def report_html(analysis: Analysis, rescaled: Analysis | None = None) -> str:
    """The self-contained HTML report on ``analysis`` (and ``rescaled``: the analysis of a
    rescaled copy of the same model, made with the same options)."""
    content = build(analysis, rescaled)
    return document(content, render(content, "png"))


def write_report(analysis: Analysis, path: str | os.PathLike,
                 rescaled: Analysis | None = None) -> Path:
    """Write :func:`report_html` to ``path`` atomically."""
    write_atomically(path, report_html(analysis, rescaled).encode("utf-8"),
                     f"{path}: the report cannot be written")
    return Path(path)


def plot(analysis: Analysis, path: str | os.PathLike) -> Path:
    """Write the variance-by-depth plot of ``analysis`` to ``path`` (.png or .svg)."""
    return write_plot(build(analysis), path)


__all__ = ["plot", "report_html", "write_report"]
