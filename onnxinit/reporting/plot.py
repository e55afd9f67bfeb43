"""The variance-by-depth figure: the report's main plot, and ``analyze --plot FILE``.

One point per tensor in topological order (the x axis), its variance on a log scale: the
predicted forward variance (a line along the main signal path, dots for the tensors beside it),
the measured one with ``--measure``, the gradient variance dL/dx when the analysis has a backward
part, the rescaled model's on the same axes with the per-layer weight scales in a panel below;
residual blocks shaded, the ``check`` thresholds dashed (when near the curves), the tensors
``analyze`` flags marked and the ones ``check`` raises a finding at crossed and named.

matplotlib draws it with the Agg backend through ``Figure`` and ``FigureCanvasAgg`` directly:
no display or GUI toolkit is needed (CI runners, servers, worker processes), pyplot's global state
is never touched, and the same content gives the same bytes.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..atomic import write_atomically
from ..errors import InvalidOptionError, OnnxInitError
from .content import ModelView, ReportContent

FORMATS = {".png": "png", ".svg": "svg"}
LABELLED_TICKS = 40  # up to this many tensors, each x tick names its op
NAMED_FINDINGS = 12  # up to this many findings, each is labelled with its rule id
COLORS = {"predicted": "#1f77b4", "measured": "#ff7f0e", "rescaled": "#2ca02c",
          "rescaled measured": "#98df8a", "gradient": "#9467bd", "gradient measured": "#c5b0d5",
          "finding": "#d62728", "flag": "#ff9896", "block": "#e8edf4", "threshold": "#7f7f7f"}


class MissingPlotLibraryError(OnnxInitError):
    """matplotlib, which draws the plots, is not installed (the ``report`` extra)."""


def require_matplotlib():
    """matplotlib's Figure and Agg canvas, or a user error saying how to install it."""
    try:  # an optional dependency, slow to import: imported on first use
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingPlotLibraryError(
            "plots and reports need matplotlib, which is not installed: "
            "pip install 'onnxinit[report]'") from None
    return Figure, FigureCanvasAgg


def plot_format(path: str | Path) -> str:
    """``png`` or ``svg`` from the file name, or a user error."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise InvalidOptionError(f"{path}: a plot is written as .png or .svg, not "
                                 f"{suffix or 'a file without a suffix'}")
    return FORMATS[suffix]


def _positive(x: np.ndarray, y: list) -> tuple[np.ndarray, np.ndarray]:
    """The points a log axis can show (finite, above zero)."""
    values = np.array([np.nan if v is None else float(v) for v in y], dtype=np.float64)
    keep = np.isfinite(values) & (values > 0)
    return x[keep], values[keep]


def _curve(ax, view: ModelView, field: str, color: str, label: str, style: str = "-") -> None:
    """``field`` of every tensor: a line along the main path, dots for the other tensors."""
    tensors = view.tensors
    x = np.arange(len(tensors))
    main = np.array([t["name"] in view.main for t in tensors], dtype=bool)
    values = [t.get(field) for t in tensors]
    mx, my = _positive(x[main], [v for v, m in zip(values, main) if m])
    ax.plot(mx, my, style, color=color, lw=1.4, label=label, zorder=3)
    ox, oy = _positive(x[~main], [v for v, m in zip(values, main) if not m])
    if len(ox):
        ax.plot(ox, oy, ".", color=color, ms=3, alpha=0.5, zorder=2,
                label=f"{label}, off the main path")


def _markers(ax, view: ModelView, field: str, color: str, label: str) -> None:
    x, y = _positive(np.arange(len(view.tensors)), [t.get(field) for t in view.tensors])
    if len(x):
        ax.plot(x, y, "o", mfc="none", mec=color, ms=4, mew=1, label=label, zorder=4)


def _flags(ax, view: ModelView) -> None:
    """analyze's flags (light triangles) and check's findings (crosses, named when few)."""
    tensors = view.tensors
    for kind, marker in (("exploding", "^"), ("vanishing", "v")):
        x, y = _positive(np.arange(len(tensors)),
                         [t["var"] if t.get("flag") == kind else None for t in tensors])
        if len(x):
            ax.plot(x, y, marker, color=COLORS["flag"], ms=6, zorder=5,
                    label=f"flagged {kind} (analyze)")
    at = view.findings_at()
    points = [(i, t["var"], ", ".join(at[t["name"]])) for i, t in enumerate(tensors)
              if t["name"] in at]
    x, y = _positive(np.array([p[0] for p in points], dtype=int), [p[1] for p in points])
    if len(x):
        ax.plot(x, y, "X", color=COLORS["finding"], ms=9, zorder=6, label="check finding")
    if len(points) <= NAMED_FINDINGS:
        for i, var, rules in points:
            if np.isfinite(var) and var > 0:
                ax.annotate(rules, (i, var), textcoords="offset points", xytext=(4, 6),
                            fontsize=7, color=COLORS["finding"], zorder=7,
                            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                                  "alpha": 0.8})


def _plotted(content: ReportContent) -> np.ndarray:
    """Every value the variance axes show."""
    fields = ("var", "measured_var", "grad_var", "measured_grad_var")
    values = [t.get(f) for view in content.views for t in view.tensors for f in fields]
    return _positive(np.zeros(len(values)), values)[1]


def _thresholds(ax, content: ReportContent) -> None:
    """check's two thresholds, each drawn when it lies within 30x of the values shown (a line
    far away would squash the curves into a corner)."""
    values = _plotted(content)
    if not len(values):
        return
    low, high = values.min(), values.max()
    summary, input_var = content.model.check["summary"], content.model.input_var
    for option, ratio in (("--max-growth", summary["max_growth"]),
                          ("--min-var", summary["min_var"])):
        level = ratio * input_var
        if low / 30 <= level <= high * 30:
            ax.axhline(level, ls="--", lw=0.8, color=COLORS["threshold"], zorder=1,
                       label=f"check {option}")
            low, high = min(low, level), max(high, level)
    ax.set_ylim(low / 2, high * 2)


def _variance_axes(ax, content: ReportContent) -> None:
    model = content.model
    for k, (_, start, end) in enumerate(content.blocks):
        ax.axvspan(start, end, color=COLORS["block"], lw=0, zorder=0,
                   label="residual block" if k == 0 else None)
    _curve(ax, model, "var", COLORS["predicted"], "predicted variance")
    if model.measured:
        _markers(ax, model, "measured_var", COLORS["measured"], "measured variance")
    if content.rescaled is not None:
        _curve(ax, content.rescaled, "var", COLORS["rescaled"], "rescaled: predicted variance")
        if content.rescaled.measured:
            _markers(ax, content.rescaled, "measured_var", COLORS["rescaled measured"],
                     "rescaled: measured variance")
    for view in content.views:
        if view.backward:
            prefix = "rescaled: " if view.key != model.key else ""
            _curve(ax, view, "grad_var", COLORS["gradient"], f"{prefix}gradient variance dL/dx",
                   style="--")
            _markers(ax, view, "measured_grad_var", COLORS["gradient measured"],
                     f"{prefix}measured gradient variance")
    _flags(ax, model)
    _thresholds(ax, content)
    ax.set_yscale("log")
    ax.set_ylabel("variance (log scale)")
    ax.grid(True, which="major", axis="y", lw=0.4, alpha=0.5)
    ax.legend(fontsize=7, ncol=2, loc="best", framealpha=0.85)


def _scale_axes(ax, content: ReportContent) -> None:
    index = content.index()
    points = [(index[s.output], s.scale) for s in content.layers
              if s.scale is not None and s.output in index and s.scale > 0]
    ax.axhline(1.0, color=COLORS["threshold"], lw=0.8)
    if points:
        x = np.array([p[0] for p in points])
        y = np.array([p[1] for p in points])
        ax.vlines(x, 1.0, y, color=COLORS["rescaled"], lw=1)
        ax.plot(x, y, "o", color=COLORS["rescaled"], ms=4)
    ax.set_yscale("log")
    ax.set_ylabel("weight scale\n(after / before)")
    ax.grid(True, which="major", axis="y", lw=0.4, alpha=0.5)


def figure(content: ReportContent):
    """The matplotlib Figure of the variance by depth (and the layer scales)."""
    Figure, Canvas = require_matplotlib()
    panels = 2 if content.layers else 1
    fig = Figure(figsize=(11, 5.2 if panels == 1 else 7.2), layout="constrained")
    Canvas(fig)
    axes = fig.subplots(panels, 1, sharex=True, squeeze=False,
                        height_ratios=[3, 1] if panels == 2 else None)[:, 0]
    _variance_axes(axes[0], content)
    if panels == 2:
        _scale_axes(axes[1], content)
    tensors = content.model.tensors
    bottom = axes[-1]
    if len(tensors) <= LABELLED_TICKS:
        bottom.set_xticks(range(len(tensors)), [t["op"] for t in tensors], rotation=60,
                          ha="right", fontsize=7)
    bottom.set_xlabel("tensor, in topological order")
    axes[0].set_title(f"{Path(content.model.path).name}: variance by depth", fontsize=10)
    return fig


def render(content: ReportContent, fmt: str, dpi: int = 100) -> bytes:
    """The figure as PNG or SVG bytes (no timestamp in either: the same content, the same
    bytes)."""
    fig = figure(content)
    buffer = io.BytesIO()
    metadata = {"Software": None} if fmt == "png" else {"Date": None, "Creator": None}
    from matplotlib import rc_context  # imported with the Figure above; svg ids from a salt

    with rc_context({"svg.hashsalt": "onnxinit", "svg.fonttype": "none"}):
        fig.savefig(buffer, format=fmt, dpi=dpi, metadata=metadata)
    return buffer.getvalue()


def write_plot(content: ReportContent, path: str | Path) -> Path:
    """Write the figure to ``path`` (.png or .svg) atomically."""
    data = render(content, plot_format(path))
    write_atomically(path, data, f"{path}: the plot cannot be written")
    return Path(path)
