"""Comparing values and names: normalised names, lookup keys, exact and close equality."""

from __future__ import annotations

import re

import numpy as np

from .layouts import squeezed

_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "params.", "net.")


def normalize_name(name: str) -> str:
    """A name with exporter decorations removed, for matching: ``:0`` suffixes dropped, ``/``
    and ``:`` read as ``.``, wrapper prefixes (``module.``, ``_orig_mod.``, ``model.``,
    ``params.``, ``net.``) and torch.export's ``p_``/``b_`` (of a flat name) stripped, and every
    run of non-alphanumerics made one ``_``."""
    key = re.sub(r":\d+$", "", name).replace("/", ".").replace(":", ".").strip(".")
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix) and len(key) > len(prefix):
                key, changed = key[len(prefix):], True
    if re.fullmatch(r"[pb]_\w+", key):  # torch.export's flat p_conv1_weight / b_bn_running_mean
        key = key[2:]
    return re.sub(r"[^0-9A-Za-z]+", "_", key).strip("_")


def value_key(array: np.ndarray) -> tuple:
    """A cheap lookup key: the shape without its size-1 dimensions (an exporter may write a bias
    of shape [C] as [1, C]) and 256 evenly spaced values. Equal arrays have equal keys; a match
    is always confirmed with :func:`equal`."""
    flat = np.asarray(array).reshape(-1)
    if flat.size > 256:
        flat = flat[np.linspace(0, flat.size - 1, 256).astype(np.int64)]
    return squeezed(array.shape), np.asarray(flat, dtype=np.float32).tobytes()


def equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Exactly equal, up to size-1 dimensions."""
    if squeezed(a.shape) != squeezed(b.shape):
        return False
    return bool(np.array_equal(np.asarray(a, np.float64).reshape(b.shape),
                               np.asarray(b, np.float64)))


def close(a: np.ndarray, b: np.ndarray, rtol: float = 1e-5) -> bool:
    """Equal within ``rtol`` relative to the largest magnitude of ``b`` (a first look at a few
    elements rejects most pairs cheaply)."""
    if squeezed(a.shape) != squeezed(b.shape):
        return False
    if a.shape != b.shape:
        a = a.reshape(b.shape)
    head_a = np.asarray(a.flat[:64], np.float64)  # .flat: no copy of a transposed view
    head_b = np.asarray(b.flat[:64], np.float64)
    if not np.allclose(head_a, head_b, rtol=10 * rtol, atol=10 * rtol * np.max(np.abs(head_b),
                                                                               initial=0.0)):
        return False
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(float(np.max(np.abs(b64), initial=0.0)), 1e-30)
    return bool(np.allclose(a64, b64, rtol=rtol, atol=rtol * scale))


def is_degenerate(array: np.ndarray) -> bool:
    """All elements equal (zeros, ones): a value that says nothing about which tensor it is."""
    flat = np.asarray(array).reshape(-1)
    return flat.size <= 1 or bool(np.all(flat == flat[0]))

