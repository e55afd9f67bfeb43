"""How much of each global pool's measured variance rides on the rare stochastic-depth drops,
predicted against measured, per pool (issue 10: EfficientNet-B1/B2's squeeze-excite pools).

Over ``--runs`` seeded batches of ``--batch-size`` N(0, 1) inputs in one onnxruntime session
(the analysis's training semantics, as ``tests/real/compare.py`` measures), with every
stochastic-depth mask (a random-only float tensor ``[N, 1, ...]``, kept samples at ``1 / q``:
drop probability ``p = 1 - q``) read along with the pools. Each sample's share of a pool's
variance is ``c_n = mean_c (g_nc - m)^2`` (``m`` the pool's mean over everything: the variance
``compare`` measures is ``mean_n c_n``). Samples are put in strata by the first mask (in graph
order) that dropped them, or none; ``strat.`` is ``sum_k P_k mean_{n in k} c_n`` with
``P_k = p_k prod_{j<k} (1 - p_j)`` the stratum's probability, the measurement with each
stratum at its expected weight, not at the count of drops the batches happened to draw (NaN
when a stratum of probability above 1e-3 drew no sample). ``no drop`` is ``mean c_n`` over the
samples no mask dropped.

    python benchmarks/stochastic_depth_draws.py --models efficientnet_b1 --size 224 --runs 128
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnxinit  # noqa: E402
from benchmarks.shared_energy_trace import trace_arguments  # noqa: E402
from onnxinit.feeds import synthetic_feeds  # noqa: E402
from onnxinit.graph import load  # noqa: E402
from onnxinit.measure import measurable_model  # noqa: E402
from onnxinit.runtime import make_session  # noqa: E402
from tests.real import exports  # noqa: E402
from tests.real.compare import random_only, seeded  # noqa: E402


def masks_and_pools(graph) -> tuple[list[str], list[str]]:
    """The per-sample random float tensors that scale a product (the masks), and the global
    average pools' outputs, in graph order."""
    random = random_only(graph)
    masks, pools = [], []
    for node_id in graph.order:
        node = graph.node(node_id)
        if node.op_type == "GlobalAveragePool":
            pools.append(node.output[0])
        elif node.op_type == "Mul":
            masks.extend(n for n in node.input if n in random and graph.is_float(n))
    return masks, pools


def main() -> None:
    args = trace_arguments(__doc__.splitlines()[0])
    warnings.simplefilter("ignore")
    for name in args.models.split(","):
        graph = load(exports.exported(name, args.size), batch_size=args.batch_size)
        predicted = {t.name: t.var for t in onnxinit.analyze(graph).tensors}
        masks, pools = masks_and_pools(graph)
        session = make_session(seeded(measurable_model(graph, masks + pools)), device="cpu")
        names = [o.name for o in session.get_outputs()]
        rng = np.random.default_rng(0)
        drawn = {t: [] for t in masks + pools}
        for _ in range(args.runs):
            values = dict(zip(names, session.run(names, synthetic_feeds(graph, rng=rng))))
            for t in drawn:
                drawn[t].append(np.asarray(values[t], np.float64).reshape(args.batch_size, -1))
        kept = np.stack([np.concatenate(drawn[t])[:, 0] for t in masks], axis=1)
        keep = np.array([1.0 / kept[:, j].max() for j in range(len(masks))])
        dropped = kept == 0
        first = np.where(dropped.any(axis=1), dropped.argmax(axis=1), len(masks))
        p = 1.0 - keep
        weight = np.append(p * np.concatenate([[1.0], np.cumprod(keep)[:-1]]), np.prod(keep))
        samples = len(first)
        print(f"{name} {args.size}x{args.size}, {args.runs} batches of {args.batch_size}")
        for j, t in enumerate(masks):
            print(f"  mask {t[-60:]:60} p {p[j]:.4f} drops {int(dropped[:, j].sum()):4d}"
                  f" expected {p[j] * samples:6.1f}")
        print(f"  {'pool':60} {'pred':>9} {'meas':>9} {'strat.':>9} {'no drop':>9} {'p/meas':>6}"
              f" {'p/strat':>7}")
        for t in pools:
            g = np.concatenate(drawn[t])
            c = ((g - g.mean()) ** 2).mean(axis=1)
            strata = [c[first == k].mean() if (first == k).any() else
                      (0.0 if weight[k] < 1e-3 else np.nan) for k in range(len(masks) + 1)]
            strat = float(np.dot(weight, strata))
            pred = predicted.get(t, np.nan)
            print(f"  {t[-60:]:60} {pred:9.3g} {c.mean():9.3g} {strat:9.3g}"
                  f" {c[first == len(masks)].mean():9.3g} {pred / c.mean():6.3f}"
                  f" {pred / strat:7.3f}")


if __name__ == "__main__":
    main()
