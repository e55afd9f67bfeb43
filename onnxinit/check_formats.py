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
    """The outcome of checking one model: its findings, or why it could not be checked.
    ``facts`` holds the thresholds and the number of tensors analysed (JSON ``summary``)."""

    model: str  # the path as the user gave it
    findings: list[Finding] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    facts: dict = field(default_factory=dict)
    error: str | None = None

    @classmethod
    def of_analysis(cls, model: str, findings: list[Finding], analysis: Analysis) -> ModelResult:
        return cls(model, findings, list(analysis.warnings),
                   {"max_growth": analysis.max_growth, "min_var": analysis.min_var,
                    "tensors": len(analysis.tensors)})

    @property
    def status(self) -> str:
        if self.error is not None:
            return UNREADABLE
        return FAILED if failed(self.findings) else PASSED

    def to_json(self) -> dict:
        """This model's entry of the JSON document's ``models``."""
        if self.status == UNREADABLE:
            return {"model": self.model, "status": UNREADABLE, "error": self.error}
        return {"model": self.model, "status": self.status,
                "findings": [f.to_dict() for f in self.findings],
                "summary": {**summary(self.findings), **self.facts},
                "warnings": list(self.warnings)}

    @classmethod
    def from_json(cls, entry: dict) -> ModelResult:
        """The result :meth:`to_json` wrote (as a worker process returns it)."""
        if entry["status"] == UNREADABLE:
            return cls(entry["model"], error=entry["error"])
        facts = {k: entry["summary"][k] for k in ("max_growth", "min_var", "tensors")
                 if k in entry["summary"]}
        return cls(entry["model"], [Finding.from_dict(f) for f in entry["findings"]],
                   list(entry["warnings"]), facts)


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
        "models": [r.to_json() for r in results],
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
