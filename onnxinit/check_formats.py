"""The text, JSON and GitHub renderings of ``check`` (SARIF is :mod:`onnxinit.sarif`).

Every rendering takes the same list of :class:`ModelResult`, one per model given, in order: a
model that was checked carries its findings, one that could not be read or analysed carries the
reason. Model-supplied strings (and file names) pass through :mod:`onnxinit.escape`.

The JSON output always has one shape, whatever the number of models (the JSON Schema is
``docs/check-output.schema.json``)::

    {"tool": "onnxinit", "version": "0.1.0", "passed": false,
     "summary": {"models": 2, "passed": 1, "failed": 1, "unreadable": 0,
                 "errors": 1, "warnings": 1, "notes": 0},
     "models": [{"model": "a.onnx", "status": "failed", "findings": [...],
                 "summary": {"errors": 1, ..., "passed": false, "max_growth": 100.0, ...},
                 "warnings": [...]},
                {"model": "b.onnx", "status": "unreadable", "error": "b.onnx: no such file"}]}
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import __version__, escape
from .analysis import Analysis
from .check import Finding, failed, summary

PASSED, FAILED, UNREADABLE = "passed", "failed", "unreadable"


@dataclass
class ModelResult:
    """The outcome of checking one model: its findings, or why it could not be checked."""

    model: str  # the path as the user gave it
    findings: list[Finding] = field(default_factory=list)
    analysis: Analysis | None = None
    error: str | None = None

    @property
    def status(self) -> str:
        if self.error is not None:
            return UNREADABLE
        return FAILED if failed(self.findings) else PASSED


def exit_status(results: list[ModelResult]) -> int:
    """0 every model passed, 1 findings in a model that was read, 2 a model could not be read."""
    statuses = {r.status for r in results}
    if UNREADABLE in statuses:
        return 2
    return 1 if FAILED in statuses else 0


def format_text(results: list[ModelResult]) -> str:
    """Per model read: one line per finding (``MODEL:1: level ID name: message``) and a summary
    line. Unreadable models are reported on stderr by the caller, not here."""
    lines = []
    for r in results:
        if r.status == UNREADABLE:
            continue
        model = escape.text(r.model)
        lines += [f"{model}:1: {f.level} {f.rule_id} {f.rule_name}: {escape.text(f.message)}"
                  for f in r.findings]
        s = summary(r.findings)
        counts = ", ".join(f"{s[k + 's']} {k}{'' if s[k + 's'] == 1 else 's'}"
                           for k in ("error", "warning", "note"))
        lines.append(f"{model}: {'passed' if s['passed'] else 'FAILED'} ({counts})")
    return "\n".join(lines)


def _model_json(r: ModelResult) -> dict:
    if r.status == UNREADABLE:
        return {"model": r.model, "status": UNREADABLE, "error": r.error}
    s = summary(r.findings)
    if r.analysis is not None:
        s.update(max_growth=r.analysis.max_growth, min_var=r.analysis.min_var,
                 tensors=len(r.analysis.tensors))
    return {"model": r.model, "status": r.status, "findings": [f.to_dict() for f in r.findings],
            "summary": s, "warnings": list(r.analysis.warnings) if r.analysis else []}


def to_json(results: list[ModelResult]) -> dict:
    """The JSON document (see the module docstring)."""
    read = [r for r in results if r.status != UNREADABLE]
    totals = {k: sum(summary(r.findings)[k] for r in read) for k in ("errors", "warnings",
                                                                     "notes")}
    counts = {status: sum(r.status == status for r in results)
              for status in (PASSED, FAILED, UNREADABLE)}
    return {
        "tool": "onnxinit",
        "version": __version__,
        "passed": exit_status(results) == 0,
        "summary": {"models": len(results), **counts, **totals},
        "models": [_model_json(r) for r in results],
    }


def format_json(results: list[ModelResult]) -> str:
    return escape.dumps(to_json(results), indent=2)


GITHUB_LEVELS = {"error": "error", "warning": "warning", "note": "notice"}


def format_github(results: list[ModelResult]) -> str:
    """GitHub Actions workflow commands: ``::error file=MODEL,line=1,title=ID name::message`` per
    finding, ``::error file=MODEL,title=onnxinit: unreadable model::reason`` per model that could
    not be read."""
    lines = []
    for r in results:
        file = escape.github_property(r.model)
        if r.status == UNREADABLE:
            title = escape.github_property("onnxinit: model not checked")
            lines.append(f"::error file={file},title={title}::{escape.github_data(r.error)}")
            continue
        for f in r.findings:
            title = escape.github_property(f"{f.rule_id} {f.rule_name}")
            lines.append(f"::{GITHUB_LEVELS[f.level]} file={file},line=1,title={title}::"
                         f"{escape.github_data(f.message)}")
    return "\n".join(lines)
