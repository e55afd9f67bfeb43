"""What each global pool of ``f(z)`` reads from z's per-sample energy, and where that energy's
fluctuation is lost at the depthwise convs (issue 10: MobileNetV3's squeeze-excite pools).

Over ``--runs`` batches of ``--batch-size`` seeded N(0, 1) inputs in one onnxruntime session
(tests/real/compare.py's semantics), per sample n and channel c: ``m_nc`` z's mean over the
positions, ``v_nc = mean_p (z_ncp - mu_c)^2 / nu_c`` its energy, ``g_nc`` f's mean; K positions,
units ``nu_f / K`` per channel (1 for independent positions), averaged over the channels.

Pools (every GlobalAveragePool of an element-wise op of a BatchNormalization output): each
channel's ``g`` regressed on ``m`` and ``v`` (least squares over the samples):

* ``F``: the measured ``K Var_n(g_c) / nu_f``;
* ``m part``, ``v part``: ``b_m^2 Var(m)`` and ``b_v^2 Var(v)`` (they do not add up to F: m
  and v co-vary through the shared energy's offsets; ``resid`` what neither explains);
* ``v (pred)``: ``b_v^2`` times the analysis's ``Var(v) = eta + lam`` of z
  (``rules/sample_energy.law``): the energy term the measured slopes give with the analysis's
  energy fluctuation;
* ``Var v``: measured / the analysis's, ``eta``: measured / the analysis's.

and for the depthwise conv (input x) whose BatchNorm'd output is z: ``x k4``, x's standardized
excess kurtosis measured / the analysis's (``rules/pool_skewness.edgeworth_terms``, what
``rules/pool_pairs.py`` reads, its inputs taken as independent across positions), and ``x
pairs``: the measured joint cumulants ``k(x_u, x_u, x_v, x_v) / nu^2`` summed over the offsets
``0 < |v - u| <= 2`` (interior positions; the shared energy adds about eta_x to each of the 24).

Depthwise convs (group > 1), x -> y: ``lam`` measured / the analysis's for x and y,
``lam_G`` the Gaussian field's value ``2 sum rho^2 / K^2`` with the analysis's correlation
(``rules/energy_fields.gaussian_local``), and ``rule(x meas)``: the conv rule of
:mod:`onnxinit.rules.sample_energy`, ``lam_G(y) + (lam_x - lam_G(x))``, on the measured lam_x.

    python benchmarks/energy_term_trace.py --models mobilenet_v3_small --size 224 --runs 8
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.shared_energy_trace import measured, per_sample, trace_arguments  # noqa: E402
from onnxinit.graph import load  # noqa: E402
from onnxinit.feeds import synthetic_feeds  # noqa: E402
from onnxinit.measure import measurable_model  # noqa: E402
from onnxinit.propagate import propagate, rule_context  # noqa: E402
from onnxinit.rules.pool_skewness import edgeworth_terms  # noqa: E402
from onnxinit.runtime import make_session  # noqa: E402
from onnxinit.rules import sample_energy  # noqa: E402
from onnxinit.rules.energy_fields import gaussian_local  # noqa: E402
from tests.real import exports  # noqa: E402
from tests.real.compare import seeded  # noqa: E402

RADIUS = 2  # the offsets of x pairs


def full_maps(graph, tensors: list[str], batch_size: int, runs: int) -> dict:
    """{tensor: float32 values [S, C, *spatial]} over the runs (per_sample's feeds)."""
    session = make_session(seeded(measurable_model(graph, tensors), 0), device="cpu")
    names = [o.name for o in session.get_outputs()]
    rng = np.random.default_rng(0)
    out: dict[str, list] = {t: [] for t in tensors}
    for _ in range(runs):
        values = dict(zip(names, session.run(names, synthetic_feeds(graph, rng=rng))))
        for t in tensors:
            out[t].append(np.asarray(values[t], np.float32))
    return {t: np.concatenate(v) for t, v in out.items()}


def pair_cumulants(x: np.ndarray) -> tuple[float, float]:
    """(k(x_u, x_u, x_u, x_u), sum over 0 < |v - u| <= RADIUS of k(x_u, x_u, x_v, x_v)), each
    over nu^2, the mean over channels, u over the interior of a ``[S, C, H, W]`` map."""
    r = RADIUS
    h, w = x.shape[2:]
    inner = x[:, :, r:h - r, r:w - r].astype(np.float64)
    mu = inner.mean(axis=(0, 2, 3), keepdims=True)
    sd = inner.std(axis=(0, 2, 3), keepdims=True)
    xs = (x - mu) / sd
    a = xs[:, :, r:h - r, r:w - r]
    total, own = 0.0, 0.0
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            b = xs[:, :, r + dy:h - r + dy, r + dx:w - r + dx]
            axes = (0, 2, 3)
            cov = (a * b).mean(axis=axes) - a.mean(axis=axes) * b.mean(axis=axes)
            k = ((a * a * b * b).mean(axis=axes) - (a * a).mean(axis=axes)
                 * (b * b).mean(axis=axes) - 2 * cov**2).mean()
            if dy == 0 and dx == 0:
                own = float(k)
            else:
                total += float(k)
    return own, total


def predicted_k4(graph, result, f: str) -> float | None:
    """The analysis's standardized excess kurtosis of the depthwise conv's input under f."""
    ctx = rule_context(graph, graph.producer[f], result)
    shape = tuple(int(d) for d in graph.shape(f))
    t = edgeworth_terms(ctx, f, result.moments[f], shape, per_class=True)
    if t is None:
        return None
    x = t.conv.node.input[0]
    nu = np.asarray(result.moments[x].var, np.float64).reshape(shape[1], -1).mean(axis=1)
    return float(np.median(t.k4.mean(axis=1) / nu**2))


def pooled_chains(graph) -> list[tuple[str, str]]:
    """(z, f) for each GlobalAveragePool of f = op(z), z a BatchNormalization output."""
    out = []
    for node_id in graph.order:
        node = graph.node(node_id)
        f = node.input[0] if node.op_type == "GlobalAveragePool" else None
        if f is None or f not in graph.producer:
            continue
        z = graph.node(graph.producer[f]).input[0]
        if z in graph.producer and graph.node(graph.producer[z]).op_type == "BatchNormalization":
            out.append((z, f))
    return out


def depthwise_convs(graph) -> list[tuple[str, str]]:
    """(x, y) of every Conv with more than one group."""
    out = []
    for node_id in graph.order:
        node = graph.node(node_id)
        groups = [a.i for a in node.attribute if a.name == "group"]
        if node.op_type == "Conv" and groups and groups[0] > 1 and node.input[0] in graph.producer:
            out.append((node.input[0], node.output[0]))
    return out


def energy_split(z_moments, f_moments, k: int, eta_lam: float) -> dict:
    """The module docstring's pool columns from per-sample moments ``[S, C]`` of z and f."""
    (zm, zs), (fm, fs) = z_moments, f_moments
    mu, nu = zm.mean(axis=0), zs.mean(axis=0) - zm.mean(axis=0) ** 2
    v = (zs - 2 * mu * zm + mu**2) / nu
    unit = k / (fs.mean(axis=0) - fm.mean(axis=0) ** 2)
    parts = np.zeros((4, zm.shape[1]))
    for c in range(zm.shape[1]):
        x = np.column_stack([zm[:, c] - zm[:, c].mean(), v[:, c] - v[:, c].mean()])
        y = fm[:, c] - fm[:, c].mean()
        b = np.linalg.lstsq(x, y, rcond=None)[0]
        parts[:, c] = (b[0] ** 2 * x[:, 0].var(), b[1] ** 2 * x[:, 1].var(),
                       b[1] ** 2 * eta_lam, (y - x @ b).var())
    parts *= unit
    return {"F": float((unit * fm.var(axis=0)).mean()), "m": parts[0].mean(),
            "v": parts[1].mean(), "v_pred": parts[2].mean(), "resid": parts[3].mean(),
            "var_v": float(v.var(axis=0).mean())}


def main() -> None:
    args = trace_arguments(__doc__.splitlines()[0])
    warnings.simplefilter("ignore")
    for name in args.models.split(","):
        graph = load(exports.exported(name, args.size), batch_size=args.batch_size)
        result = propagate(graph)
        ctx = rule_context(graph, graph.order[-1], result)
        pools = [p for p in pooled_chains(graph) if args.match in p[1]]
        convs = [p for p in depthwise_convs(graph) if args.match in p[1]]
        data = per_sample(graph, sorted({t for p in pools + convs for t in p}),
                          args.batch_size, args.runs)
        depthwise = dict((y, x) for x, y in depthwise_convs(graph))
        inputs = {f: depthwise[graph.node(graph.producer[z]).input[0]] for z, f in pools
                  if graph.node(graph.producer[z]).input[0] in depthwise}
        # whole maps of up to 1024 positions (memory: every sample and channel is kept)
        inputs = {f: x for f, x in inputs.items()
                  if len(graph.shape(x)) == 4 and int(np.prod(graph.shape(x)[2:])) <= 1024}
        print(f"{name} {args.size}x{args.size}, {args.runs} batches of {args.batch_size}")
        print(f"{'pool input':56} {'K':>5} {'F':>6} {'m part':>6} {'v part':>6} {'v pred':>6}"
              f" {'resid':>6} {'Var v':>15} {'eta':>15} {'x k4':>11} {'x pairs':>7}")
        maps = full_maps(graph, sorted(set(inputs.values())), args.batch_size, args.runs)
        for z, f in pools:
            law = sample_energy.law(ctx, z)
            if law is None:
                continue
            eta, lam = float(law[0]), float(np.mean(law[1]))
            k = int(np.prod(graph.shape(f)[2:]))
            got = energy_split(data[z], data[f], k, eta + lam)
            eta_m = measured(*data[z])["eta"]
            print(f"{f[-56:]:56} {k:5} {got['F']:6.2f} {got['m']:6.2f} {got['v']:6.2f}"
                  f" {got['v_pred']:6.2f} {got['resid']:6.2f} {got['var_v']:7.4f}/{eta + lam:.4f}"
                  f" {eta_m:7.4f}/{eta:.4f}", end="")
            if f in inputs:
                own, pairs = pair_cumulants(maps[inputs[f]])
                k4 = predicted_k4(graph, result, f)
                print(f" {own:5.2f}/{k4 if k4 is not None else float('nan'):5.2f} {pairs:7.2f}",
                      end="")
            print()
        print(f"\n{'depthwise conv output':56} {'K':>5} {'lam x':>15} {'lam_G x':>7}"
              f" {'lam y':>15} {'lam_G y':>7} {'rule(x meas)':>12}")
        for x, y in convs:
            laws = sample_energy.law(ctx, x), sample_energy.law(ctx, y)
            got = measured(*data[x]), measured(*data[y])
            if None in laws or None in got:
                continue
            shapes = [tuple(int(d) for d in graph.shape(t)) for t in (x, y)]
            lam_g = [float(np.mean(gaussian_local(result.moments[t], s)))
                     for t, s in zip((x, y), shapes)]
            lam_p = [float(np.mean(law[1])) for law in laws]
            print(f"{y[-56:]:56} {int(np.prod(shapes[1][2:])):5} {got[0]['lam']:7.4f}/"
                  f"{lam_p[0]:.4f} {lam_g[0]:7.4f} {got[1]['lam']:7.4f}/{lam_p[1]:.4f}"
                  f" {lam_g[1]:7.4f} {lam_g[1] + got[0]['lam'] - lam_g[0]:12.4f}")


if __name__ == "__main__":
    main()
