"""How a 1x1 conv carries the variance of each sample's channel means, predicted against
measured (issue 10: is MobileNetV3's missing pooled variance a per-channel quantity the field
does not carry?).

For every Conv with a 1x1 kernel over more than one input channel and position (K positions),
over ``--runs`` batches of ``--batch-size`` seeded N(0, 1) inputs in one onnxruntime session
(tests/real/compare.py's semantics), with ``g_nc = mean_p x_ncp`` and ``nu_c`` the measured
variance of channel c, ``F_c = K Var_n(g_nc) / nu_c`` (units of ``nu / K``: 1 for independent
positions); the output's means are exactly ``g_y = W g_x + b``, so

    Var_n(g_yj) = sum_c W_jc^2 Var_n(g_xc) + sum_{c != c'} W_jc W_jc' Cov_n(g_xc, g_xc'):

* ``in F``: the input's ``F_c`` averaged over the channels, measured / the analysis's field
  (``rules/pooling.spatial_mean`` per channel over ``spatial.within_variance``);
* ``in F nu``: the same weighted by ``nu_c`` (what the ``W^2 nu_c`` weights read on average):
  it exceeds ``in F`` where the channels with the larger variance have the larger ``F_c``;
* ``field, nu meas``: the field's ``F_c`` weighted by the measured ``nu_c`` (what the field's
  own ``F_c`` would give with each channel's variance right);
* ``diag``: the output's mean ``F`` from the first sum (the measured input channels' own
  variances weighted by ``W^2``: what a per-channel field carries), ``cross``: what the second
  sum (the channels' covariance with each other) adds, ``sd``: the spread of ``cross`` over 50
  random sign flips of W's entries (a weight draw's fluctuation has this size);
* ``out F``: the output's mean ``F`` measured / field; ``rule``: the largest difference over
  the output channels between the field's ``F_j`` and ``sum_c W_jc^2 nu_c F_c / sum_c W_jc^2
  nu_c`` of the field's input (0: the field is per channel and weighted by ``W^2 nu_c``).

    python benchmarks/channel_weighting_trace.py --models mobilenet_v3_small --size 224
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.shared_energy_trace import per_sample, trace_arguments  # noqa: E402
from onnxinit.graph import load  # noqa: E402
from onnxinit.propagate import propagate  # noqa: E402
from onnxinit.rules.pooling import spatial_mean  # noqa: E402
from onnxinit.spatial import positions, within_variance  # noqa: E402
from tests.real import exports  # noqa: E402


def pointwise_convs(graph) -> list[tuple[str, str, np.ndarray]]:
    """(input, output, W [C_out, C_in]) of every dense 1x1 Conv over a map."""
    out = []
    for node_id in graph.order:
        node = graph.node(node_id)
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        w = graph.initializers.get(node.input[1])
        w = None if w is None else numpy_helper.to_array(w)
        shape = graph.shape(node.input[0])
        if (w is None or w.ndim != 4 or w.shape[2:] != (1, 1) or w.shape[1] < 2 or not shape
                or int(np.prod(shape[2:])) < 2):
            continue
        out.append((node.input[0], node.output[0], np.asarray(w, np.float64)[:, :, 0, 0]))
    return out


def field_f(result, name: str, shape) -> tuple[np.ndarray, np.ndarray]:
    """The analysis's ``F_c`` and ``nu_c`` of map ``name``."""
    x = result.moments[name]
    nu = within_variance(positions(x, shape), shape[1])
    var = np.broadcast_to(np.ravel(spatial_mean(x, shape).var), nu.shape)
    return int(np.prod(shape[2:])) * var / nu, nu


def main() -> None:
    args = trace_arguments(__doc__.splitlines()[0])
    warnings.simplefilter("ignore")
    rng = np.random.default_rng(1)
    for name in args.models.split(","):
        graph = load(exports.exported(name, args.size), batch_size=args.batch_size)
        result = propagate(graph)
        convs = [c for c in pointwise_convs(graph) if args.match in c[1]
                 and c[0] in result.moments and c[1] in result.moments]
        data = per_sample(graph, sorted({t for c in convs for t in c[:2]}), args.batch_size,
                          args.runs)
        print(f"{name} {args.size}x{args.size}, {args.runs} batches of {args.batch_size}")
        print(f"{'conv output':52} {'C_in':>4} {'K':>5} {'in F':>11} {'in F nu':>11}"
              f" {'nu meas':>7} {'diag':>6} {'cross':>6} {'sd':>5} {'out F':>11} {'rule':>7}"
              "   (meas/field, nu / K)")
        for x, y, w in convs:
            shape = tuple(int(d) for d in graph.shape(x))
            k = int(np.prod(shape[2:]))
            first, second = data[x]
            nu = second.mean(axis=0) - first.mean(axis=0) ** 2
            cov = np.cov(first.T)
            f_in, f_nu = k * np.diag(cov) / nu, k * np.trace(cov) / nu.sum()
            ff_in, nu_field = field_f(result, x, shape)
            unit = (w * w) @ nu / k
            diag = float(np.mean((w * w) @ np.diag(cov) / unit))
            full = float(np.mean(np.einsum("jc,cd,jd->j", w, cov, w) / unit))
            flips = []
            for _ in range(50):
                s = w * rng.choice([-1.0, 1.0], size=w.shape)
                flips.append(np.mean(np.einsum("jc,cd,jd->j", s, cov, s) / unit))
            y_shape = tuple(int(d) for d in graph.shape(y))
            g_y, s_y = data[y]
            nu_y = s_y.mean(axis=0) - g_y.mean(axis=0) ** 2
            f_y = float(np.mean(k * g_y.var(axis=0, ddof=1) / nu_y))
            ff_y = field_f(result, y, y_shape)[0]
            rule = (w * w) @ (nu_field * ff_in) / ((w * w) @ nu_field)
            print(f"{y[-52:]:52} {shape[1]:4} {k:5} {f_in.mean():5.2f}/{ff_in.mean():5.2f}"
                  f" {f_nu:5.2f}/{np.sum(ff_in * nu_field) / nu_field.sum():5.2f}"
                  f" {np.sum(ff_in * nu) / nu.sum():7.2f} {diag:6.2f}"
                  f" {full - diag:+6.2f} {np.std(flips):5.2f} {f_y:5.2f}/{ff_y.mean():5.2f}"
                  f" {np.max(np.abs(rule - ff_y)):7.1e}")


if __name__ == "__main__":
    main()
