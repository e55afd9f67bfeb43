"""The token field of a gradient (:mod:`.tokens`) through layout ops that select, pad or reorder
the token axes one by one: Swin's window partition (a Transpose that splits the map's two axes),
its zero padding and the crop back, and ``torch.roll`` written as Slices and a Concat.

A field on a tensor covers the contiguous axes A; an element's token is ``(flat index over A //
stride) % n``, and elements of different groups (outer digits, stride offsets) are independent.
Spelled out over a contiguous run R of axes that holds A (:func:`spell`), it is the covariance
between every two indices of R, ``cov[tok_i, tok_j]`` where i and j share their group and their
indices on R's axes outside A, 0 elsewhere. A layout op moves those indices:

* :func:`taken`: index ``i`` of the new tensor along axis ``a`` is index ``picks[a][i]`` of the
  old (Concat's inputs, a Pad cropped back, a roll undone): ``Sigma'[i, j] = Sigma[p(i), p(j)]``;
* :func:`placed`: index ``i`` of the old goes to ``picks[a][i]`` of the new, zero elsewhere (a
  Slice's input: ``Sigma'[p(i), p(j)] = Sigma[i, j]``);
* :func:`transposed_back`: a Transpose's input from its output, the run widened until the
  axes it covers come from one run of the input's.

The result is a field over the whole run (at most :data:`MAX_SPELLED` indices), normalised as
:func:`.tokens.make` does; its diagonal keeps the zeros of padding and the per-token profile.
"""

from __future__ import annotations

import numpy as np

from ..moments import Tokens
from .tokens import axes_of, make

MAX_SPELLED = 1024


def _run(axes, extra) -> list[int]:
    lo, hi = min([*axes, *extra]), max([*axes, *extra])
    return list(range(lo, hi + 1))


def spell(t: Tokens, shape, run: list[int]) -> np.ndarray | None:
    """The field over every index of the axes ``run`` (C order), None when over the cap or
    when the field's axes are not in the run."""
    rank = len(shape)
    axes = axes_of(t, rank)
    if axes is None or not set(axes) <= set(run):
        return None
    sizes = [int(shape[a]) for a in run]
    total = int(np.prod(sizes, dtype=np.int64))
    if total > MAX_SPELLED or int(np.prod([shape[a] for a in axes], dtype=np.int64)) % (
            t.n * t.stride):
        return None
    index = np.indices(sizes).reshape(len(run), -1)
    inner = [run.index(a) for a in axes]
    flat = np.ravel_multi_index(tuple(index[inner]), tuple(sizes[k] for k in inner))
    token = (flat // t.stride) % t.n
    key = [flat // (t.stride * t.n), flat % t.stride] + [index[k] for k in range(len(run))
                                                         if k not in inner]
    same = np.ones((total, total), dtype=bool)
    for part in key:
        same &= part[:, None] == part[None, :]
    return np.where(same, t.cov[token[:, None], token[None, :]], 0.0)


def taken(t: Tokens | None, from_shape, to_shape,
          picks: dict[int, np.ndarray]) -> tuple[Tokens | None, float]:
    """The field over ``to_shape`` whose index ``i`` along each picked axis ``a`` is index
    ``picks[a][i]`` of the field ``t`` over ``from_shape`` (module docstring), and the second
    moment of the taken elements over the whole's (``mean diag Sigma'``: a Pad's zeros cropped
    away leave the real elements' larger share; 1 without a field or where the field repeats
    over groups of indices)."""
    return _move(t, from_shape, to_shape, picks, place=False)


def placed(t: Tokens | None, from_shape, to_shape, picks: dict[int, np.ndarray]) -> Tokens | None:
    """The field over ``to_shape`` where index ``i`` of ``from_shape`` along each picked axis
    ``a`` lands at ``picks[a][i]`` and the other indices are zero (module docstring)."""
    return _move(t, from_shape, to_shape, picks, place=True)[0]


def _move(t, from_shape, to_shape, picks, place: bool) -> tuple[Tokens | None, float]:
    rank = len(from_shape)
    axes = axes_of(t, rank)
    if axes is None or len(to_shape) != rank:
        return None, 1.0
    picks = {a: np.asarray(p, dtype=np.int64) for a, p in picks.items() if a in axes}
    if not picks:
        return t, 1.0  # moves along other axes keep each feature's token covariance
    sig = spell(t, from_shape, axes)
    large = to_shape if place else from_shape
    small = from_shape if place else to_shape  # whose indices the picks enumerate
    sizes_large = [int(large[a]) for a in axes]
    if sig is None or int(np.prod(sizes_large, dtype=np.int64)) > MAX_SPELLED:
        return None, 1.0
    index = np.indices([int(small[a]) for a in axes]).reshape(len(axes), -1)
    mapped = [picks[a][index[k]] if a in picks else index[k] for k, a in enumerate(axes)]
    where = np.ravel_multi_index(tuple(mapped), tuple(sizes_large))
    if place:
        total = int(np.prod(sizes_large, dtype=np.int64))
        out = np.zeros((total, total))
        out[np.ix_(where, where)] = sig
    else:
        out = sig[np.ix_(where, where)]
    share = 1.0  # a field repeated over groups holds their average profile, not each place's
    if sig.shape[0] == t.n:
        share = float(np.mean(np.diag(out))) / max(float(np.mean(np.diag(sig))), 1e-300)
    return make(axes, rank, out), share


def transposed_back(t: Tokens | None, perm, out_shape) -> Tokens | None:
    """The field of a Transpose's input (``out axis j = in axis perm[j]``) from its output's,
    spelled out over the smallest run of output axes that comes from one run of input axes."""
    rank = len(out_shape)
    axes = axes_of(t, rank)
    if axes is None:
        return None
    run = list(axes)
    while True:
        source = [int(perm[j]) for j in run]
        in_run = _run(source, [])
        wanted = sorted(j for j in range(rank) if int(perm[j]) in in_run)
        wider = _run(wanted, run)
        if wider == run:
            break
        run = wider
    sig = spell(t, out_shape, run)
    if sig is None:
        return None
    sizes = [int(out_shape[j]) for j in run]
    order = [run.index(j) for j in sorted(run, key=lambda j: perm[j])]
    index = np.arange(sig.shape[0]).reshape(sizes).transpose(order).reshape(-1)
    return make(in_run, rank, sig[np.ix_(index, index)])
