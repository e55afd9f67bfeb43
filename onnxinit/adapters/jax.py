"""JAX adapter: rescaled ONNX weights into a parameter pytree (Flax ``params``, Haiku's nested
dict, a flat dict).

Parameter names are the pytree paths joined by ``/`` (``params/Dense_0/kernel``). JAX arrays are
immutable, so :func:`apply_to` returns a new pytree; :func:`load_into` replaces the entries of a
flat mutable mapping. Mapping is mostly by value (JAX exporters rarely keep parameter names):
pass the original ONNX model when the rescaled file carries no ``onnxinit`` scales.
"""

from __future__ import annotations

from collections.abc import MutableMapping

import numpy as np

from ..weights import MappingReport
from . import as_float, is_float, plan_values


def path_name(path) -> str:
    """``(DictKey('params'), DictKey('Dense_0'), DictKey('kernel'))`` -> ``params/Dense_0/kernel``."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def apply_to(params, rescaled, original=None, *, strict: bool = False):
    """``(new_params, report)``: ``params`` (any pytree of arrays) with every mapped leaf
    replaced by the rescaled values (in the leaf's dtype), all other leaves as they were.
    Raises :class:`onnxinit.weights.MappingError` when the pytree does not match."""
    import jax
    import jax.numpy as jnp

    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = [path_name(path) for path, _ in leaves]
    values = {}
    for name, (_, leaf) in zip(names, leaves):
        array = np.asarray(leaf)
        if is_float(array):
            values[name] = array
    new, report = plan_values(values, set(), rescaled, original, strict)
    out = [jnp.asarray(as_float(new[name]), dtype=leaf.dtype) if name in new else leaf
           for name, (_, leaf) in zip(names, leaves)]
    return jax.tree_util.tree_unflatten(treedef, out), report


def load_into(flat: MutableMapping, rescaled, original=None, *,
              strict: bool = False) -> MappingReport:
    """Replace the entries of a flat ``{name: array}`` mapping in place (numpy arrays stay
    numpy, JAX arrays become JAX arrays of the same dtype); return the report."""
    values = {k: np.asarray(v) for k, v in flat.items() if is_float(np.asarray(v))}
    new, report = plan_values(values, set(), rescaled, original, strict)
    for name, value in new.items():
        old = flat[name]
        if isinstance(old, np.ndarray):
            flat[name] = as_float(value).astype(old.dtype)
        else:
            import jax.numpy as jnp

            flat[name] = jnp.asarray(as_float(value), dtype=old.dtype)
    return report
