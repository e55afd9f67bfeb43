"""What every ``check`` finding is: a rule (stable id, name, level, descriptions) and a finding
(the rule, the level it was raised at, a message that explains itself, where it is)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class RuleInfo:
    id: str
    name: str
    level: str  # the default level: "error" | "warning" | "note"
    short: str
    full: str  # the long description: what fires it, why it matters, what to do


RULES: dict[str, RuleInfo] = {}  # every family module registers its rules at import


def register(*rules: RuleInfo) -> None:
    for rule in rules:
        if rule.id in RULES and RULES[rule.id] != rule:
            raise ValueError(f"rule {rule.id} registered twice")
        RULES[rule.id] = rule


@dataclass
class Finding:
    rule_id: str
    level: str  # "error" | "warning" | "note"
    message: str
    tensor: str
    node: str
    op: str
    value: float | None = None

    @property
    def rule_name(self) -> str:
        return RULES[self.rule_id].name

    @classmethod
    def from_dict(cls, entry: dict) -> Finding:
        """The finding :meth:`to_dict` wrote (a value "inf"/"nan" back to a float)."""
        value = entry.get("value")
        return cls(entry["rule_id"], entry["level"], entry["message"], entry["tensor"],
                   entry["node"], entry["op"], None if value is None else float(value))

    def to_dict(self) -> dict:
        """JSON-safe: a non-finite value becomes the string "inf" or "nan"."""
        out = {"rule_id": self.rule_id, "rule": self.rule_name,
               **{k: v for k, v in asdict(self).items() if k != "rule_id"}}
        if out["value"] is not None and not math.isfinite(out["value"]):
            out["value"] = str(out["value"])
        return out


def fmt(x: float) -> str:
    """A ratio or variance in messages: 3 significant digits, inf/nan spelled out."""
    return f"{x:.3g}" if math.isfinite(x) else str(x)
