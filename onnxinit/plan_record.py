"""The plan record: what ``rescale`` stores in a model's metadata about the Plan that made it.

``metadata_props["onnxinit.plan"]`` holds JSON naming the first source model, the methods and
every initializer's scale relative to that source (or that it was replaced). ``rescale`` writes
it (composing with the record of a model that was itself rescaled); ``analyze`` and
``export-weights`` read it.
"""

from __future__ import annotations

import json
import os

import onnx

from .plan import Plan

PLAN_METADATA_KEY = "onnxinit.plan"


def plan_record(plan: Plan, source: str | os.PathLike | None,
                previous: dict | None = None) -> dict:
    """What ``rescale`` stores under ``metadata_props["onnxinit.plan"]`` (as JSON).

    ``{"version": 1, "source": path of the input model, "method": "autoinit",
    "scales": {initializer: scale}, "replaced": [initializer, ...]}``. Scales are relative to
    ``source``. When the input was itself a rescaled model (``previous``, its own record),
    the records compose so that ``source`` stays the first model and every scale is relative to
    it: scales multiply, a replaced tensor stays replaced, a replacement replaces."""
    scales, replaced = plan.scales(), plan.replaced()
    record = {"version": 1, "source": str(source) if source is not None else None,
              "method": plan.method, "scales": scales, "replaced": replaced}
    if not previous:
        return record
    old_scales = dict(previous.get("scales", {}))
    old_replaced = list(previous.get("replaced", []))
    for name, scale in scales.items():
        if name in old_scales:
            old_scales[name] *= scale
        elif name not in old_replaced:
            old_scales[name] = scale
    for name in replaced:
        old_scales.pop(name, None)
        if name not in old_replaced:
            old_replaced.append(name)
    return {"version": 1, "source": previous.get("source", record["source"]),
            "method": ",".join(m for m in (previous.get("method"), plan.method) if m),
            "scales": old_scales, "replaced": old_replaced}


def read_plan_record(model: onnx.ModelProto) -> dict | None:
    """The record :func:`plan_record` stored in ``model``, or None (absent or not readable)."""
    for prop in model.metadata_props:
        if prop.key == PLAN_METADATA_KEY:
            try:
                record = json.loads(prop.value)
            except ValueError:
                return None
            return record if isinstance(record, dict) else None
    return None


def set_plan_record(model: onnx.ModelProto, record: dict) -> None:
    """Store ``record`` as JSON under ``metadata_props["onnxinit.plan"]`` (replacing one there);
    every other metadata entry is kept in order."""
    value = json.dumps(record, sort_keys=True, separators=(",", ":"))
    for prop in model.metadata_props:
        if prop.key == PLAN_METADATA_KEY:
            prop.value = value
            return
    entry = model.metadata_props.add()
    entry.key = PLAN_METADATA_KEY
    entry.value = value
