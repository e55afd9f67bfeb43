"""The per-sample energy a network's channels and positions share, predicted against measured,
tensor by tensor, and what each global pool's variance is made of (issue 10's squeeze-excite
pools).

For every float map ``[N, C, *spatial]`` whose name contains ``--match`` (default: all), over
``--runs`` batches of ``--batch-size`` seeded N(0, 1) inputs in one onnxruntime session (the
analysis's training semantics; tests/real/compare.py), with ``e_nc = mean_p (x_ncp - mu_c)^2
/ nu_c`` each sample's energy per channel and ``eps_n = mean_c e_nc - 1``:

* ``eta``: the mean over pairs of distinct channels of ``Cov_n(e_nc, e_nc')``, against
  ``rules/sample_energy.shared_energy``'s;
* ``lam``: the mean over channels of ``Var_n(e_nc)`` less eta, against ``sample_energy.law``'s;
* ``alpha/sd``: the root mean square over channels of the regression of the sample means on
  eps, over the root mean variance, against the predicted offsets alike;
* ``load sd``: the spread over channels of each channel's regression of its energy on eps
  (mean 1), against ``sample_energy.loading``'s, and ``r`` their correlation (noisy: see
  below).

Per global pool: the predicted variance split into the spatial-mean rule with the correlation
field, the first-order Edgeworth terms (``rules/pool_skewness.py``) and the shared energy
(``rules/sample_energy.py``), each in units of ``nu / K`` (1 for independent positions), and
the measured ``F = K mean_c Var_n(g_c) / nu`` with the part of it a regression on eps explains.
Sampling noise: eta, a mean over channel pairs, is steady over 64 samples (8 batches of 8);
per-channel regressions are not (on MobileNetV3-small at 224 the channels' regressions of their
energies on eps spread 0.45 about 1 with eps shuffled across the samples, 0.57 unshuffled).

    python benchmarks/shared_energy_trace.py --models mobilenet_v3_small --size 224 --runs 8
    python benchmarks/shared_energy_trace.py --models efficientnet_b0 --size 64 --runs 16 \\
        --match features.5
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxinit.feeds import synthetic_feeds  # noqa: E402
from onnxinit.graph import load  # noqa: E402
from onnxinit.measure import measurable_model  # noqa: E402
from onnxinit.propagate import propagate, rule_context  # noqa: E402
from onnxinit.rules import sample_energy, shared_pool  # noqa: E402
from onnxinit.rules.pool_skewness import pooled_correction  # noqa: E402
from onnxinit.rules.pooling import gaussian_spatial_mean  # noqa: E402
from onnxinit.runtime import make_session  # noqa: E402
from tests.real import exports  # noqa: E402
from tests.real.compare import seeded  # noqa: E402


def maps(graph, match: str) -> list[str]:
    """Float maps with a channel axis and more than one position, in graph order."""
    out = []
    for node_id in graph.order:
        for name in graph.node(node_id).output:
            shape = graph.shape(name) if name else None
            if (shape and len(shape) >= 3 and int(np.prod(shape[2:])) > 1 and shape[1] > 1
                    and graph.is_float(name) and match in name):
                out.append(name)
    return out


def per_sample(graph, tensors: list[str], batch_size: int, runs: int):
    """{tensor: (mean over positions [S, C], mean square over positions [S, C])}."""
    session = make_session(seeded(measurable_model(graph, tensors), 0), device="cpu")
    names = [o.name for o in session.get_outputs()]
    rng = np.random.default_rng(0)
    sums: dict[str, list] = {t: [[], []] for t in tensors}
    for _ in range(runs):
        values = dict(zip(names, session.run(names, synthetic_feeds(graph, rng=rng))))
        for t in tensors:
            v = np.asarray(values.pop(t), np.float64)
            v = v.reshape(v.shape[0], v.shape[1], -1)
            sums[t][0].append(v.mean(axis=2))
            sums[t][1].append((v * v).mean(axis=2))
    return {t: (np.concatenate(a), np.concatenate(b)) for t, (a, b) in sums.items()}


def measured(first: np.ndarray, second: np.ndarray) -> dict | None:
    """eta, lam, alpha/sd, and the per-channel variance of the sample means with the part a
    regression on eps explains, from per-sample moments (module docstring)."""
    s, c = first.shape
    mu = first.mean(axis=0)
    nu = second.mean(axis=0) - mu**2
    if c < 2 or np.any(nu <= 0):
        return None
    e = (second - 2 * mu * first + mu**2) / nu
    centred = e - e.mean(axis=0)
    cov = centred.T @ centred / s
    eta = (cov.sum() - np.trace(cov)) / (c * (c - 1))
    eps = e.mean(axis=1)
    eps = eps - eps.mean()
    slope = ((first - mu) * eps[:, None]).mean(axis=0) / max(float(eps.var()), 1e-300)
    means_var = float(first.var(axis=0).mean())
    load = (centred * eps[:, None]).mean(axis=0) / max(float(eps.var()), 1e-300)
    return {"load": load, "eta": eta, "lam": np.trace(cov) / c - eta, "nu": float(nu.mean()),
            "alpha_sd": float(np.sqrt((slope**2).mean() / nu.mean())), "means_var": means_var,
            "explained": float((slope**2).mean() * eps.var()) / max(means_var, 1e-300)}


def trace_arguments(description: str, match: str = "") -> argparse.Namespace:
    """The command line of a per-map trace (this script, spatial_rings.py): the models, their
    input size, the measured batches and the tensor-name filter."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--models", default="mobilenet_v3_small")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--match", default=match)
    return parser.parse_args()


def main() -> None:
    args = trace_arguments(__doc__.splitlines()[0])
    warnings.simplefilter("ignore")
    for name in args.models.split(","):
        graph = load(exports.exported(name, args.size), batch_size=args.batch_size)
        result = propagate(graph)
        known = result.moments
        tensors = [t for t in maps(graph, args.match) if t in known]
        data = per_sample(graph, tensors, args.batch_size, args.runs)
        ctx = rule_context(graph, graph.order[-1], result)
        print(f"{name} {args.size}x{args.size}, {args.runs} batches of {args.batch_size}")
        print(f"{'tensor':56} {'op':12} {'K':>5} {'eta':>7} {'pred':>7} {'lam':>7} {'pred':>7}"
              f" {'alpha/sd':>8} {'pred':>6} {'load sd':>7} {'pred':>6} {'r':>5}")
        for t in tensors:
            got = measured(*data[t])
            if got is None:
                continue
            found = sample_energy.shared_energy(ctx, t)
            law = sample_energy.law(ctx, t)
            if found is None or law is None:
                continue
            op = graph.node(graph.producer[t]).op_type
            k = int(np.prod(graph.shape(t)[2:]))
            alpha = float(np.sqrt(np.mean(found[1] ** 2) / got["nu"]))
            loads = sample_energy.loading(ctx, t)
            r = (float(np.corrcoef(loads, got["load"])[0, 1])
                 if np.std(loads) > 0 and np.std(got["load"]) > 0 else 0.0)
            print(f"{t[-56:]:56} {op[:12]:12} {k:5} {got['eta']:7.4f} {found[0]:7.4f} "
                  f"{got['lam']:7.4f} {float(np.mean(law[1])):7.4f} {got['alpha_sd']:8.3f} "
                  f"{alpha:6.3f} {np.std(got['load']):7.3f} {np.std(loads):6.3f} {r:5.2f}")
        pools(graph, result, data)


def pools(graph, result, data) -> None:
    """Each global pool of a traced map: predicted parts against the measured F."""
    print(f"\n{'pool input':56} {'pred/meas':>9} {'rule':>6} {'edgew.':>6} {'shared':>6}"
          f" {'meas F':>7} {'shared':>7}   (units of nu / K)")
    for node_id in graph.order:
        node = graph.node(node_id)
        if node.op_type != "GlobalAveragePool" or node.input[0] not in data:
            continue
        x_name = node.input[0]
        x, shape = result.moments[x_name], tuple(int(d) for d in graph.shape(x_name))
        ctx = rule_context(graph, node_id, result)
        got = measured(*data[x_name])
        if got is None:
            continue
        unit = got["nu"] / int(np.prod(shape[2:]))
        parts = [float(np.mean(gaussian_spatial_mean(ctx, x, shape).var))]
        for extra in (pooled_correction(ctx, x, shape),
                      shared_pool.pooled_shared(ctx, x, shape)):
            parts.append(0.0 if extra is None else float(np.mean(extra)))
        f = got["means_var"] / unit
        print(f"{x_name[-56:]:56} {sum(parts) / got['means_var']:9.3f} "
              + " ".join(f"{p / unit:6.2f}" for p in parts)
              + f" {f:7.2f} {f * got['explained']:7.2f}")


if __name__ == "__main__":
    main()
