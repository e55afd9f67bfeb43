"""Which node's rule over-grows the shared per-sample energy eta, node by node and by eta's
size (issue 10: EfficientNet's stages 6-7 at 224, eta near 1).

For every float map whose name contains ``--match`` (as ``shared_energy_trace.py``: ``eta`` the
mean over pairs of distinct channels of ``Cov_n(e_nc, e_nc')``, ``e_nc`` sample n's energy in
channel c over the channel's variance), measured by onnxruntime over ``--runs`` batches of
``--batch-size`` against ``rules/sample_energy.shared_energy``'s, each node's growth
``eta(out) / eta(in)`` measured and predicted, ``in`` its main input (an element-wise chain's
start, a conv's or BatchNorm's input, a gated map); a residual ``Add`` shows its sum rule
(``rules/sample_masks.sum_factors`` with the mask's own factor ``(1 - w)^2 (r - 1) (1 +
eta_b)``) on the measured inputs, ``w`` the skip's share of the variance, ``r = E m^4 / (E
m^2)^2`` of the measured mask. ``drops``: the share of the variance of eps (the sample energy
less 1) that a linear regression on the drop indicators of the stochastic-depth masks upstream
explains, against ``pred``, the share of the predicted eta in the masks' two-point factors
(``rules/sample_masks.py``; a factor carries ``(r - 1) (1 + eta_x)`` from its mask on, the
drop's own ``r - 1`` and its product with the masked branch's energy). Then, per kind of node
and per band of the measured eta, the geometric mean of predicted over measured growth (``> 1``:
the rule over-grows eta).

Per ``BatchNormalization`` whose input is traced: the measured growth split by what the batch
energy ``D_bc`` (batch b's mean of ``e_nc``) divides: ``shared`` its mean over the channels
``1 + d_b`` alone, ``chan`` its channel part ``D_bc / (1 + d_b)`` alone; and, with ``u_n`` the
sample's energy over the channels (mean 1), the second-order terms of ``Var(u / (1 + d))``,
``t1 = -2 E[u^2 d]`` and ``t2 = 3 E[u^2 d^2]`` (their sum is the shared part's change), ``N
Var(d) / eta`` (1 for independent samples, 0 where an earlier BatchNorm pinned the batch) and
the correlation of ``d_b`` with the batch's mean of ``(u - 1)^2``; then ``g1``, ``g2``, the
sample energy ``u`` at the BatchNorm's input regressed on ``x``, the sample energy less 1 at
the previous traced BatchNorm's output, ``u = 1 + g1 x + g2 (x^2 - E x^2)`` (where that
BatchNorm pinned each batch's mean of x, ``d_b = g2 (m2_b - E m2)``: the curvature of the
energy's response since then is what the next BatchNorm divides out); ``independent``, the
shared part's change over eta that t1 + t2 give with the samples' ``x^2`` independent
(:func:`independent_terms`).

    python benchmarks/eta_growth.py --models efficientnet_b0 --size 224 --runs 32 \\
        --match features.6
    python benchmarks/eta_growth.py --models efficientnet_b1 --size 224 --runs 128 \\
        --match features.7

(EfficientNet-B0 at 224, 32 batches, every ``features`` map: 150-250 s, 2.5 GB; B1, 128
batches, ``features.6``: 300 s, 2.8 GB.)
"""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from shared_energy_trace import maps, trace_arguments  # noqa: E402

from onnxinit.feeds import synthetic_feeds  # noqa: E402
from onnxinit.graph import load  # noqa: E402
from onnxinit.measure import measurable_model  # noqa: E402
from onnxinit.propagate import propagate, rule_context  # noqa: E402
from onnxinit.rules import sample_energy  # noqa: E402
from onnxinit.runtime import make_session  # noqa: E402
from tests.real import exports  # noqa: E402
from tests.real.compare import random_only, seeded  # noqa: E402

BANDS = (0.0, 0.2, 0.5, math.inf)


def collect(graph, tensors: list[str], masks: list[str], batch_size: int, runs: int):
    """({tensor: (per-sample channel means [S, C], mean squares [S, C])}, {mask: [S]})."""
    session = make_session(seeded(measurable_model(graph, tensors + masks), 0), device="cpu")
    names = [o.name for o in session.get_outputs()]
    rng = np.random.default_rng(0)
    first = {t: [] for t in tensors}
    second = {t: [] for t in tensors}
    drawn = {m: [] for m in masks}
    for _ in range(runs):
        values = dict(zip(names, session.run(names, synthetic_feeds(graph, rng=rng))))
        for t in tensors:
            v = np.asarray(values.pop(t), np.float64)
            v = v.reshape(v.shape[0], v.shape[1], -1)
            first[t].append(v.mean(axis=2))
            second[t].append((v * v).mean(axis=2))
        for m in masks:
            drawn[m].append(np.asarray(values[m], np.float64).reshape(batch_size, -1)[:, 0])
    return ({t: (np.concatenate(first[t]), np.concatenate(second[t])) for t in tensors},
            {m: np.concatenate(v) for m, v in drawn.items()})


def energies(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(e [S, C] each sample's energy per channel over the channel's variance, nu [C])."""
    mu = first.mean(axis=0)
    nu = np.maximum(second.mean(axis=0) - mu**2, 1e-300)
    return (second - 2 * mu * first + mu**2) / nu, nu


def eta_of(e: np.ndarray) -> float:
    centred = e - e.mean(axis=0)
    c = e.shape[1]
    cov = centred.T @ centred / len(e)
    return float((cov.sum() - np.trace(cov)) / (c * (c - 1)))


def batchnorm_parts(e: np.ndarray, batch: int) -> dict:
    """The measured BatchNorm's division of the energies ``e`` [S, C] of its input by each
    batch's energy, split (module docstring)."""
    s, c = e.shape
    grouped = e.reshape(s // batch, batch, c)
    energy = grouped.mean(axis=1)  # [B, C]
    shared = energy.mean(axis=1)  # 1 + d_b
    base = eta_of(e)
    u = e.mean(axis=1) / e.mean()
    d = u.reshape(-1, batch).mean(axis=1) - 1.0
    ub = u.reshape(-1, batch)
    m2 = ((ub - 1.0) ** 2).mean(axis=1)
    return {
        "shared": eta_of((grouped / shared[:, None, None]).reshape(s, c)) / base,
        "chan": eta_of((grouped / (energy / shared[:, None])[:, None]).reshape(s, c)) / base,
        "t1": float(-2 * (ub**2 * d[:, None]).mean()) / base,
        "t2": float(3 * (ub**2 * d[:, None] ** 2).mean()) / base,
        "pinned": float(batch * d.var() / max(u.var(), 1e-300)),
        "corr": float(np.corrcoef(d, m2)[0, 1]) if d.std() > 0 and m2.std() > 0 else 0.0,
    }


def response(e_x: np.ndarray, e_u: np.ndarray) -> tuple[float, float]:
    """(g1, g2): the sample energy ``u`` (mean over the channels of ``e_u``, mean 1) regressed
    on ``x``, the sample energy of ``e_x`` less 1: ``u = 1 + g1 x + g2 (x^2 - E x^2)``."""
    x = e_x.mean(axis=1) / e_x.mean() - 1.0
    u = e_u.mean(axis=1) / e_u.mean()
    design = np.stack([np.ones_like(x), x, x * x - (x * x).mean()], axis=1)
    coef = np.linalg.lstsq(design, u, rcond=None)[0]
    return float(coef[1]), float(coef[2])


def drop_share(e: np.ndarray, drops: np.ndarray) -> float:
    """The share of the variance of eps (the sample energy over the channels less 1) that a
    linear regression on the masks' drop indicators ``drops`` [S, M] explains."""
    x = e.mean(axis=1) / e.mean() - 1.0
    design = np.concatenate([np.ones((len(x), 1)), drops], axis=1)
    fit = design @ np.linalg.lstsq(design, x, rcond=None)[0]
    return float(fit.var() / max(float(x.var()), 1e-300))


def independent_terms(e_x: np.ndarray, e_u: np.ndarray, g1: float, g2: float,
                      batch: int) -> float:
    """t1 + t2 over eta for samples independent but for the batch's pinned sum of x: ``d_b =
    g2 (m2_b - E m2)``, ``t1 = -2 g2 (g1^2 + 2 g2) Var(x^2) / N``, ``t2 = 3 (1 + eta) g2^2
    Var(x^2) / N`` (``x`` the previous BatchNorm's sample energy less 1, ``Var(x^2)`` measured)."""
    x = e_x.mean(axis=1) / e_x.mean() - 1.0
    eta = float((e_u.mean(axis=1) / e_u.mean()).var())
    v = float((x * x).var())
    t1 = -2.0 * g2 * (g1 * g1 + 2.0 * g2) * v / batch
    t2 = 3.0 * (1.0 + eta) * g2 * g2 * v / batch
    return (t1 + t2) / max(eta, 1e-300)


def kind(graph, ctx, tensor: str, masks: set) -> str:
    """The node's kind for the summary: an element-wise chain after its start's kind
    (``chain<dw``), a conv (``dw``, ``1x1``, ``kxk``), ``BN``, ``gate`` (a per-sample
    per-channel product), ``mask``, or the op type."""
    node = graph.node(graph.producer[tensor])
    if sample_energy.is_chain(ctx, tensor):
        base = sample_energy.chain_record(ctx, tensor, graph.shape(tensor))
        start = kind(graph, ctx, base[0], masks) if base is not None else "?"
        return "chain<" + start
    if node.op_type == "Mul" and any(n in masks for n in node.input):
        return "mask"
    if node.op_type == "Mul" and len([n for n in node.input if n in ctx.known]) == 2:
        return "gate"
    if node.op_type == "Conv":
        w = graph.shape(node.input[1])
        groups = ctx.for_node(graph.producer[tensor]).attr("group") or 1
        if groups > 1 and groups == w[0]:
            return "dw"
        return "1x1" if all(int(k) == 1 for k in w[2:]) else "kxk"
    return "BN" if node.op_type == "BatchNormalization" else node.op_type


def inner(graph, ctx, tensor: str) -> bool:
    """``tensor`` only feeds the element-wise chain it is part of (a SiLU's Sigmoid): its
    energy is no node's input."""
    uses = graph.consumers.get(tensor, [])
    return (sample_energy.is_chain(ctx, tensor) and bool(uses)
            and all(sample_energy.is_chain(ctx, o) for c, _ in uses
                    for o in graph.node(c).output if o))


def main_input(graph, ctx, tensor: str, traced: set, masks: set) -> list[str]:
    """The traced inputs whose eta the node's output grows from (a chain's start)."""
    if sample_energy.is_chain(ctx, tensor):
        base = sample_energy.chain_record(ctx, tensor, graph.shape(tensor))
        return [base[0]] if base is not None and base[0] in traced else []
    node = graph.node(graph.producer[tensor])
    ins = [n for n in node.input if n in traced]
    if node.op_type == "Mul" and any(n in masks for n in node.input):
        return ins[:1]
    if node.op_type in ("Add", "Sub"):  # both signals traced, or no growth to show
        return ins if len(ins) == 2 else []
    return ins


def add_rule(graph, data, drawn, masks, a: str, b: str) -> float | None:
    """The sum rule on the measured inputs of ``a + b``: per factor ``(w sqrt(eta_a) + (1 - w)
    sqrt(eta_b))^2``, a mask's own factor ``(1 - w)^2 (r - 1) (1 + eta_b)`` (b the masked
    branch before its mask, r the measured mask's)."""
    for skip, branch in ((a, b), (b, a)):
        node = graph.node(graph.producer[branch])
        mask = [n for n in node.input if n in masks]
        pre = [n for n in node.input if n in data]
        if node.op_type != "Mul" or not mask or not pre:
            continue
        m = drawn[mask[0]]
        r = float((m**4).mean() / (m**2).mean() ** 2)
        es, nus = energies(*data[skip])
        eb, _ = energies(*data[pre[0]])
        _, num = energies(*data[branch])
        w = float(nus.sum() / (nus.sum() + num.sum()))
        eta_s, eta_b = eta_of(es), eta_of(eb)
        return ((w * math.sqrt(max(eta_s, 0)) + (1 - w) * math.sqrt(max(eta_b, 0))) ** 2
                + (1 - w) ** 2 * (r - 1) * (1 + eta_b))
    return None


def report(name: str, size: int, args) -> None:
    graph = load(exports.exported(name, size), batch_size=args.batch_size)
    result = propagate(graph)
    ctx = rule_context(graph, graph.order[-1], result)
    tensors = [t for t in maps(graph, args.match) if t in result.moments]
    random = random_only(graph)
    masks = sorted({n for nid in graph.order for n in graph.node(nid).input
                    if graph.node(nid).op_type == "Mul" and n in random and graph.is_float(n)})
    data, drawn = collect(graph, tensors, masks, args.batch_size, args.runs)
    traced, mask_set = set(tensors), set(masks)
    measured = {t: eta_of(energies(*data[t])[0]) for t in tensors}
    predicted = {}
    for t in tensors:
        found = sample_energy.shared_energy(ctx, t)
        predicted[t] = float(found[0]) if found is not None else math.nan
    print(f"{name} {size}x{size}, {args.runs} batches of {args.batch_size}")
    print(f"{'tensor':58} {'kind':9} {'eta':>7} {'pred':>7} {'p/m':>6}"
          f" {'drops':>6} {'pred':>6} {'growth':>7} {'pred':>7}")
    summary: dict = {}
    last_bn = None
    position = {node_id: i for i, node_id in enumerate(graph.order)}
    for t in tensors:
        if inner(graph, ctx, t):
            continue
        k = kind(graph, ctx, t, mask_set)
        m, p = measured[t], predicted[t]
        line = f"{t[-58:]:58} {k[:9]:9} {m:7.4f} {p:7.4f} {p / m if m > 0 else math.nan:6.3f}"
        upstream = [u for u in masks if position[graph.producer[u]] < position[graph.producer[t]]]
        if upstream and m > 0:
            share = drop_share(energies(*data[t])[0],
                               np.stack([drawn[u] == 0 for u in upstream], axis=1))
            whole, linear = sample_energy.shared_energy(ctx, t), sample_energy.law(ctx, t)
            pred = 1.0 - linear[0] / whole[0] if whole and linear and whole[0] > 0 else math.nan
            line += f" {share:6.2f} {pred:6.2f}"
        else:
            line += f" {'':6} {'':6}"
        ins = main_input(graph, ctx, t, traced, mask_set)
        if len(ins) == 1 and measured[ins[0]] > 0 and predicted[ins[0]] > 0 and m > 0:
            gm, gp = m / measured[ins[0]], p / predicted[ins[0]]
            line += f" {gm:7.3f} {gp:7.3f}"
            band = next(i for i in range(len(BANDS) - 1) if BANDS[i] <= m < BANDS[i + 1])
            summary.setdefault((k, band), []).append(math.log(gp / gm))
        elif len(ins) == 2:
            rule = add_rule(graph, data, drawn, mask_set, *ins)
            if rule is not None:
                line += f"  sum rule on the measured inputs {rule:.4f} ({rule / m:.3f}x)"
        if k == "BN" and ins:
            e_in = energies(*data[ins[0]])[0]
            parts = batchnorm_parts(e_in, args.batch_size)
            line += ("  shared {shared:.3f} chan {chan:.3f} t1 {t1:+.3f} t2 {t2:+.3f}"
                     " N Var(d)/eta {pinned:.3f} corr(d, m2) {corr:+.2f}").format(**parts)
            if last_bn is not None:
                e_x = energies(*data[last_bn])[0]
                g1, g2 = response(e_x, e_in)
                line += (f" g1 {g1:.3f} g2 {g2:+.3f} independent"
                         f" {independent_terms(e_x, e_in, g1, g2, args.batch_size):+.3f}")
            last_bn = t
        print(line)
    print(f"\n{'kind':12} " + " ".join(f"{'eta ' + f'{lo:g}-{hi:g}':>16}"
                                       for lo, hi in zip(BANDS, BANDS[1:])))
    for k in sorted({k for k, _ in summary}):
        cells = []
        for band in range(len(BANDS) - 1):
            logs = summary.get((k, band), [])
            cells.append(f"{math.exp(np.mean(logs)):10.3f} ({len(logs):3d})" if logs
                         else f"{'':16}")
        print(f"{k[:12]:12} " + " ".join(cells))
    print("(predicted over measured growth, geometric mean (nodes); > 1: the rule over-grows)")


def main() -> None:
    args = trace_arguments(__doc__.splitlines()[0])
    warnings.simplefilter("ignore")
    for name in args.models.split(","):
        report(name, args.size, args)


if __name__ == "__main__":
    main()
