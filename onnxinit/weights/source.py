"""What an adapter loads and what it matches against: :func:`weight_source`."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ..errors import InvalidOptionError
from ..plan_record import read_plan_record
from .files import read_weights, record_from_metadata
from .tensors import float_initializers, identity_aliases, load_model


@dataclass
class WeightSource:
    """What to load (``new``), what to match the framework's current values against
    (``reference``: the original values where known), which references are only approximate
    (rescaled values divided by their recorded scale), and the graph when there is one.
    ``aliases`` (alias -> initializer, see :func:`identity_aliases`) are names that carry an
    initializer's values; :meth:`expanded` adds them to ``new`` and ``reference``."""

    new: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]
    approximate: set[str] = field(default_factory=set)
    model: onnx.ModelProto | None = None
    aliases: dict[str, str] = field(default_factory=dict)

    def expanded(self) -> WeightSource:
        """A copy where every alias of a known initializer is an entry of its own."""
        aliases = {a: i for a, i in self.aliases.items() if i in self.new and a not in self.new}
        new = dict(self.new)
        reference = dict(self.reference)
        for alias, name in aliases.items():
            new[alias] = self.new[name]
            if name in self.reference:
                reference[alias] = self.reference[name]
        approximate = self.approximate | {a for a, i in aliases.items() if i in self.approximate}
        return WeightSource(new=new, reference=reference, approximate=approximate,
                            model=self.model, aliases=aliases)


def _is_weights_file(obj) -> bool:
    return isinstance(obj, (str, os.PathLike)) and Path(obj).suffix.lower() in (
        ".safetensors", ".npz")


def weight_source(rescaled, original=None) -> WeightSource:
    """Resolve what an adapter loads.

    ``rescaled``: an ONNX path or ModelProto, a ``.safetensors``/``.npz`` path, or a dict
    name -> array. ``original``: the ONNX model (path or ModelProto, or the weights file
    exported from it) the framework module was exported as; values are matched against it.
    Without it, tensors the ``onnxinit.plan`` record marks as scaled are matched against
    ``new / scale`` (approximately), replaced ones by name only, and the rest against their own
    (unchanged) values."""
    model = None
    record = None
    aliases: dict[str, str] = {}
    if isinstance(rescaled, Mapping):
        new = {str(k): np.asarray(v) for k, v in rescaled.items()}
    elif _is_weights_file(rescaled):
        new, meta = read_weights(rescaled)
        record = record_from_metadata(meta)
        aliases = json.loads(meta.get("onnxinit.aliases", "{}"))
    else:
        model, _ = load_model(rescaled)
        new = float_initializers(model)
        record = read_plan_record(model)
        aliases = identity_aliases(model)
    if original is not None:
        if _is_weights_file(original):
            reference = read_weights(original)[0]
        else:
            original_model, _ = load_model(original)
            model = model if model is not None else original_model
            aliases = aliases or identity_aliases(original_model)
            reference = float_initializers(original_model)
        for name, value in new.items():
            if name in reference and reference[name].shape != value.shape:
                raise InvalidOptionError(
                    f"the original model's {name!r} has shape {reference[name].shape}, the "
                    f"rescaled one {value.shape}: they are not the same network")
        return WeightSource(new=new, reference=reference, model=model, aliases=aliases)
    reference, approximate = {}, set()
    scales = (record or {}).get("scales", {})
    replaced = set((record or {}).get("replaced", []))
    for name, value in new.items():
        if name in replaced:
            continue
        scale = scales.get(name)
        if scale is None or scale == 1.0:
            reference[name] = value
        elif scale != 0.0:
            reference[name] = value.astype(np.float64) / scale
            approximate.add(name)
    return WeightSource(new=new, reference=reference, approximate=approximate, model=model,
                        aliases=aliases)

