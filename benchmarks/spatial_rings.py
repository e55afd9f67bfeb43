"""Where a global pool's local part is lost: each map's within-sample spatial covariance by
distance, measured against the analysis's (issue 10's MobileNetV3 squeeze-excite pools).

For every float map ``[N, C, H, W]`` whose name contains ``--match``, over ``--runs`` batches of
``--batch-size`` seeded N(0, 1) inputs in one onnxruntime session (tests/real/compare.py's
training semantics): per channel the covariance over the samples of every pair of positions,
summed by the pairs' Chebyshev distance (ring r) and divided by ``K nu`` (K positions, nu the
channel's variance about its mean), so that the rings add up to ``F = K Var(mean) / nu``, the
pooled variance in units of ``nu / K`` (1 for independent positions); the mean over channels.
The analysis's: its per-position variances and its correlation field
(``Spatial.corr``, offsets beyond the stored ones at the field's floor), the same sums. The
batch statistics' centring of a BatchNorm's output is not in the analysis's rings (a pool
applies it), so measured rings far beyond the kernels' reach read slightly negative. Per map
also: the spread of the channels' variances (coefficient of variation) and the correlation over
channels of each channel's rings 1-4 with its variance, measured and predicted (a 1x1 conv
weighs its input channels by their variances: where the two go together it grows the rings).

    python benchmarks/spatial_rings.py --models mobilenet_v3_small --size 224 --match features.8/
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxinit.correlation import recentred  # noqa: E402
from onnxinit.feeds import synthetic_feeds  # noqa: E402
from onnxinit.graph import load  # noqa: E402
from onnxinit.measure import measurable_model  # noqa: E402
from onnxinit.propagate import propagate  # noqa: E402
from onnxinit.runtime import make_session  # noqa: E402
from onnxinit.spatial import dense, positions  # noqa: E402
from tests.real import exports  # noqa: E402
from tests.real.compare import seeded  # noqa: E402
from shared_energy_trace import trace_arguments  # noqa: E402

RINGS = 8  # rings printed


def maps(graph, known, match: str) -> list[str]:
    """Float rank-4 maps of more than one position whose names contain ``match``."""
    out = []
    for node_id in graph.order:
        for name in graph.node(node_id).output:
            shape = graph.shape(name) if name else None
            if (shape and len(shape) == 4 and shape[2] * shape[3] > 1 and name in known
                    and graph.is_float(name) and match in name):
                out.append(name)
    return out


def rings(cov: np.ndarray, nu: np.ndarray, chebyshev: np.ndarray) -> np.ndarray:
    """``[C, RINGS]``: the covariances ``cov`` ``[C, K, K]`` summed per ring over ``K nu``."""
    k = cov.shape[1]
    return np.stack([cov[:, chebyshev == r].sum(axis=1) / (k * nu) for r in range(RINGS)], 1)


def predicted_covariance(m, shape) -> tuple[np.ndarray, np.ndarray]:
    """The analysis's ``[C, K, K]`` covariance of a sample's positions and ``nu`` ``[C]``."""
    _, c, h, w = shape
    sp = positions(m, shape)
    mean, var = (np.broadcast_to(a, (1, c, h, w)).reshape(c, h * w) for a in dense(sp))
    nu = var.mean(axis=1) + mean.var(axis=1)
    rows, cols = np.divmod(np.arange(h * w), w)
    if sp.corr is None:
        rho = np.broadcast_to(np.eye(h * w), (c, h * w, h * w))
    else:
        field = recentred(sp.corr.rho, 1, (h - 1, w - 1), sp.corr.floor.reshape(-1))
        field = np.broadcast_to(field, (c,) + field.shape[1:])
        rho = field[:, rows[None, :] - rows[:, None] + h - 1, cols[None, :] - cols[:, None] + w - 1]
    sd = np.sqrt(var)
    return rho * sd[:, :, None] * sd[:, None, :], nu


def main() -> None:
    args = trace_arguments(__doc__.splitlines()[0], match="features.8/")
    warnings.simplefilter("ignore")
    for name in args.models.split(","):
        graph = load(exports.exported(name, args.size), batch_size=args.batch_size)
        known = propagate(graph).moments
        tensors = maps(graph, known, args.match)
        session = make_session(seeded(measurable_model(graph, tensors), 0), device="cpu")
        names = [o.name for o in session.get_outputs()]
        rng = np.random.default_rng(0)
        values: dict[str, list] = {t: [] for t in tensors}
        for _ in range(args.runs):
            out = dict(zip(names, session.run(names, synthetic_feeds(graph, rng=rng))))
            for t in tensors:
                values[t].append(np.asarray(out.pop(t), np.float64))
        print(f"{name} {args.size}x{args.size}, {args.runs} batches of {args.batch_size}; rings "
              "0.. of the pooled variance (units nu / K), measured / predicted")
        for t in tensors:
            x = np.concatenate(values.pop(t))
            s, c, h, w = x.shape
            flat = x.reshape(s, c, h * w)
            nu = (flat**2).mean(axis=(0, 2)) - flat.mean(axis=(0, 2)) ** 2
            centred = flat - flat.mean(axis=0)
            cov = np.einsum("scp,scq->cpq", centred, centred) / s
            rows, cols = np.divmod(np.arange(h * w), w)
            cheb = np.maximum(np.abs(rows[:, None] - rows[None]),
                              np.abs(cols[:, None] - cols[None]))
            got = rings(cov, nu, cheb)
            cov_p, nu_p = predicted_covariance(known[t], (s, c, h, w))
            want = rings(cov_p, nu_p, cheb)
            op = graph.node(graph.producer[t]).op_type
            total = f"F {got.sum(1).mean():5.2f}/{want.sum(1).mean():5.2f}"
            print(f"{t[-60:]:60} {op[:12]:12} {total} | "
                  + " ".join(f"{a:5.2f}/{b:5.2f}" for a, b in zip(got.mean(0), want.mean(0))))
            near_m, near_p = got[:, 1:5].sum(1), want[:, 1:5].sum(1)
            print(f"{'':60} {'':12} nu cv {nu.std() / nu.mean():.3f}/{nu_p.std() / nu_p.mean():.3f}"
                  f", corr(rings 1-4, nu) {np.corrcoef(near_m, nu)[0, 1]:5.2f}/"
                  f"{np.corrcoef(near_p, nu_p)[0, 1] if np.std(near_p) > 0 else 0.0:5.2f}")


if __name__ == "__main__":
    main()
