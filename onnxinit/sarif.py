"""SARIF 2.1.0 output of ``check`` (GitHub code scanning and other dashboards read it).

One run for all the models checked. Each result names the model file as its physical location
(``artifactLocation.uri``: the path as given, relative and with ``/`` separators, or a
``file://`` URI when absolute; ``region.startLine`` 1, as the file is binary), the ONNX node as a
logical location (kind ``function``: a node applies an op), the stable rule id, and a computed
``partialFingerprints["onnxinitFinding/v1"]`` = sha256 of ``"<rule id>:<tensor name>"`` so
upload tools do not try to fingerprint the binary model and a finding keeps its identity
across runs.

The log is written whatever happens to the models: one that could not be read or analysed is a
failed invocation (``invocations[0].executionSuccessful`` false, exit code 2), with one
``toolExecutionNotifications`` entry per such model giving the reason and the model as its
location, so code scanning never reads an unreadable model as a clean one.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from . import __version__, escape
from .check import RULES, Finding
from .check_formats import UNREADABLE, ModelResult, exit_status

SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
FINGERPRINT_KEY = "onnxinitFinding/v1"


def artifact_uri(model: str) -> str:
    """A URI reference for the model path as the user gave it."""
    path = Path(model)
    if path.is_absolute():
        return path.as_uri()
    return quote(str(PurePosixPath(*path.parts)) if path.parts else model, safe="/._-~")


def fingerprint(finding: Finding) -> str:
    return hashlib.sha256(f"{finding.rule_id}:{finding.tensor}".encode()).hexdigest()


def _rule(info) -> dict:
    return {
        "id": info.id,
        "name": info.name,
        "shortDescription": {"text": info.short},
        "fullDescription": {"text": info.full},
        "defaultConfiguration": {"level": info.level},
        "help": {"text": info.full},
    }


def _result(model: str, finding: Finding, rule_index: dict[str, int]) -> dict:
    properties = {"tensor": finding.tensor, "op": finding.op}
    if finding.value is not None:
        properties["value"] = finding.value if math.isfinite(finding.value) else str(finding.value)
    return {
        "ruleId": finding.rule_id,
        "ruleIndex": rule_index[finding.rule_id],
        "level": finding.level,
        "message": {"text": finding.message},
        "locations": [{
            "physicalLocation": {
                "artifactLocation": {"uri": artifact_uri(model)},
                "region": {"startLine": 1},
            },
            "logicalLocations": [{"name": finding.node or finding.tensor, "kind": "function"}],
        }],
        "partialFingerprints": {FINGERPRINT_KEY: fingerprint(finding)},
        "properties": properties,
    }


def _location(model: str) -> dict:
    return {"physicalLocation": {"artifactLocation": {"uri": artifact_uri(model)}}}


def _invocation(results: list[ModelResult]) -> dict:
    failures = [r for r in results if r.status == UNREADABLE]
    invocation = {"executionSuccessful": not failures, "exitCode": exit_status(results)}
    if failures:
        invocation["toolExecutionNotifications"] = [
            {"level": "error", "message": {"text": r.error}, "locations": [_location(r.model)]}
            for r in failures]
    return invocation


def sarif_log(results: list[ModelResult]) -> dict:
    """The SARIF log of one ``check`` run over ``results`` (one per model given)."""
    rule_index = {rule_id: i for i, rule_id in enumerate(RULES)}
    return {
        "$schema": SCHEMA_URI,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "onnxinit",
                "version": __version__,
                "rules": [_rule(info) for info in RULES.values()],
            }},
            "invocations": [_invocation(results)],
            "results": [_result(r.model, f, rule_index) for r in results for f in r.findings],
            "columnKind": "unicodeCodePoints",
        }],
    }


def format_sarif(results: list[ModelResult]) -> str:
    return escape.dumps(sarif_log(results), indent=2)
