"""The variance of each sample's channel means, predicted against measured, on every map of a
network (issue 10: where the squeeze-excite pools' missing variance comes from).

For every float map ``[N, C, *spatial]`` (K positions) whose name contains ``--match``, over
``--runs`` batches of ``--batch-size`` seeded N(0, 1) inputs in one onnxruntime session (the
analysis's training semantics; tests/real/compare.py), with ``g_nc = mean_p x_ncp``:

* ``F meas``: ``K mean_c Var_n(g_nc) / nu`` (nu the mean channel variance): what a global
  average pool of the map would read, in units of ``nu / K`` (1 for independent positions);
* ``eps``: the part of it a regression of ``g_nc`` on the sample's shared energy ``eps_n``
  explains (as ``benchmarks/shared_energy_trace.py``);
* ``F field``: the analysis's spatial mean of the map (``rules/pooling.spatial_mean``: the
  per-position variances and the carried correlation field), the part every later layer sees;
* ``+pool``: where a GlobalAveragePool reads the map, what that pool adds on top
  (``rules/pool_skewness.py``'s Edgeworth terms and ``rules/shared_pool.py``'s shared energy):
  the pool's prediction is ``F field + pool``; those parts are not in the field, so the maps
  after it do not carry them.

A map's ``F meas - F field`` that a pool's ``+pool`` does not cover is carried on from the
layers before: a mean deviation passes a conv as its summed taps and an element-wise f as
``E[t f] / s`` (Mehler's first term), so a deficit at one squeeze-excite input reappears at the
next block's.

    python benchmarks/channel_means_trace.py --models mobilenet_v3_small --size 224 --runs 8
    python benchmarks/channel_means_trace.py --models mobilenet_v3_large --match features.1
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.shared_energy_trace import maps, measured, per_sample, trace_arguments  # noqa: E402
from onnxinit.graph import load  # noqa: E402
from onnxinit.propagate import propagate, rule_context  # noqa: E402
from onnxinit.rules import shared_pool  # noqa: E402
from onnxinit.rules.pool_skewness import pooled_correction  # noqa: E402
from onnxinit.rules.pooling import spatial_mean  # noqa: E402
from tests.real import exports  # noqa: E402


def pooled_by(graph) -> dict[str, str]:
    """{map: the GlobalAveragePool node reading it}."""
    out = {}
    for node_id in graph.order:
        node = graph.node(node_id)
        if node.op_type == "GlobalAveragePool":
            out[node.input[0]] = node_id
    return out


def pool_extra(graph, result, node_id, name: str, shape) -> float:
    """Mean over channels of what the pool ``node_id`` adds to the field's spatial mean."""
    ctx = rule_context(graph, node_id, result)
    x = result.moments[name]
    parts = [pooled_correction(ctx, x, shape), shared_pool.pooled_shared(ctx, x, shape)]
    return float(sum(np.mean(p) for p in parts if p is not None))


def main() -> None:
    args = trace_arguments(__doc__.splitlines()[0])
    warnings.simplefilter("ignore")
    for name in args.models.split(","):
        graph = load(exports.exported(name, args.size), batch_size=args.batch_size)
        result = propagate(graph)
        tensors = [t for t in maps(graph, args.match) if t in result.moments]
        data = per_sample(graph, tensors, args.batch_size, args.runs)
        pools = pooled_by(graph)
        print(f"{name} {args.size}x{args.size}, {args.runs} batches of {args.batch_size}")
        print(f"{'tensor':60} {'op':10} {'K':>5} {'F meas':>7} {'eps':>6} {'F field':>7}"
              f" {'+pool':>6} {'meas/pred':>9}   (units of nu / K)")
        for t in tensors:
            got = measured(*data[t])
            if got is None:
                continue
            shape = tuple(int(d) for d in graph.shape(t))
            unit = got["nu"] / int(np.prod(shape[2:]))
            field = float(np.mean(spatial_mean(result.moments[t], shape).var)) / unit
            extra = (pool_extra(graph, result, pools[t], t, shape) / unit if t in pools
                     else 0.0)
            f = got["means_var"] / unit
            op = graph.node(graph.producer[t]).op_type
            print(f"{t[-60:]:60} {op[:10]:10} {shape[2] * int(np.prod(shape[3:])):5} {f:7.2f}"
                  f" {f * got['explained']:6.2f} {field:7.2f} "
                  f"{(f'{extra:6.2f}' if t in pools else ''):>6} {f / (field + extra):9.3f}")


if __name__ == "__main__":
    main()
