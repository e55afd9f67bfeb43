"""What makes an activation's per-channel energy fluctuate across samples more than a Gaussian
field's (issue 10: MobileNetV3's expansion HardSwish maps, where the local part of the
squeeze-excite pools first goes missing).

For every HardSwish or Relu ``f(z)`` whose input ``z`` is a BatchNormalization output and whose
name contains ``--match``, over ``--runs`` batches of ``--batch-size`` seeded N(0, 1) inputs in
one onnxruntime session (tests/real/compare.py's semantics), with per sample n and channel c
``m = mean_p z``, ``v = mean_p (z - m)^2``, ``s3 = mean_p (z - m)^3`` and ``e = mean_p (f -
mu_f)^2 / nu_f`` (mu_f, nu_f over the whole batch):

* ``lam f``: the mean over channels of ``Var_n(e)`` less the mean over channel pairs of
  ``Cov_n(e_c, e_c')`` (``benchmarks/shared_energy_trace.py``'s lam), measured;
* ``gauss``: the same for a Gaussian field with z's *measured* per-channel correlation
  (``(1/K^2) sum_{p,q} sum_{n=1..12} a_n^2 rho_pq^n / n! / Var(f)^2``, ``a_n = E[(f - E f)^2
  He_n(t)]``, z standardised), and ``analysis``: ``rules/sample_energy.law``'s lam;
* the regression of ``e`` (each channel centred over samples, each sample over channels) on
  ``m, v, s3``: R^2, and ``Var_n(s3)`` measured against the Gaussian field's ``6 sum rho^3 /
  K^2``, and ``2 Cov(b_m m, b_s3 s3)``, the part of ``Var(e)`` that the mean and the third
  moment carry together (0 for a Gaussian field).

It holds every matched map of every measured sample in memory (MobileNetV3-small at 224,
8 batches of 8: 3 GB; -large's 112x112 maps need 5 GB or more: narrow ``--match``).

    python benchmarks/sample_moments_trace.py --models mobilenet_v3_small --size 224 \\
        --match block.0.2
"""

from __future__ import annotations

import sys
import warnings
from math import factorial
from pathlib import Path

import numpy as np
from numpy.polynomial.hermite_e import hermegauss, hermeval

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.shared_energy_trace import trace_arguments  # noqa: E402
from onnxinit.feeds import synthetic_feeds  # noqa: E402
from onnxinit.graph import load  # noqa: E402
from onnxinit.measure import measurable_model  # noqa: E402
from onnxinit.propagate import propagate, rule_context  # noqa: E402
from onnxinit.rules import sample_energy  # noqa: E402
from onnxinit.runtime import make_session  # noqa: E402
from tests.real import exports  # noqa: E402
from tests.real.compare import seeded  # noqa: E402

FUNCTIONS = {"HardSwish": lambda x: x * np.clip(x + 3, 0, 6) / 6,
             "Relu": lambda x: np.maximum(x, 0)}
ORDERS = 12


def pairs(graph, match: str) -> list[tuple[str, str, str]]:
    """(op, z, f) for each HardSwish/Relu of a BatchNormalization output with a spatial map."""
    out = []
    for node_id in graph.order:
        node = graph.node(node_id)
        if node.op_type not in FUNCTIONS or match not in node.output[0]:
            continue
        z = node.input[0]
        shape = graph.shape(z)
        if (z in graph.producer and graph.node(graph.producer[z]).op_type == "BatchNormalization"
                and shape and len(shape) == 4 and shape[2] * shape[3] > 1):
            out.append((node.op_type, z, node.output[0]))
    return out


def collect(graph, names: list[str], runs: int) -> dict[str, np.ndarray]:
    session = make_session(seeded(measurable_model(graph, names), 0), device="cpu")
    outs = [o.name for o in session.get_outputs()]
    rng = np.random.default_rng(0)
    got: dict[str, list] = {n: [] for n in names}
    for _ in range(runs):
        values = dict(zip(outs, session.run(outs, synthetic_feeds(graph, rng=rng))))
        for n in names:
            got[n].append(np.asarray(values[n], np.float64))
    return {n: np.concatenate(v) for n, v in got.items()}


def hermite(f) -> tuple[np.ndarray, float]:
    """a_n = E[(f - E f)^2 He_n(t)], n = 0..ORDERS, and Var f, t ~ N(0, 1)."""
    t, w = hermegauss(200)
    w = w / w.sum()
    y = f(t)
    g = (y - w @ y) ** 2
    return np.array([w @ (g * hermeval(t, [0] * n + [1])) for n in range(ORDERS + 1)]), w @ g


def rho_powers(z: np.ndarray) -> np.ndarray:
    """[C, ORDERS]: (1/K^2) sum over position pairs of rho^n, rho each channel's measured
    correlation at the pair's offset (all pairs of the map, by FFT)."""
    _, _, h, w = z.shape
    zc = (z - z.mean(axis=(0, 2, 3), keepdims=True)) / z.std(axis=(0, 2, 3), keepdims=True)
    spec = np.fft.rfft2(zc, s=(2 * h, 2 * w))
    sums = np.fft.irfft2(spec * spec.conj(), s=(2 * h, 2 * w)).mean(axis=0)
    ones = np.fft.rfft2(np.ones((h, w)), s=(2 * h, 2 * w))
    count = np.rint(np.fft.irfft2(ones * ones.conj(), s=(2 * h, 2 * w)))
    rho = np.where(count > 0.5, sums / np.maximum(count, 1), 0.0)
    k = h * w
    return np.array([[(count * r**n).sum() / k**2 for n in range(1, ORDERS + 1)] for r in rho])


def lam(e: np.ndarray) -> float:
    cov = np.cov(e.T, bias=True)
    c = cov.shape[0]
    return float(np.trace(cov) / c - (cov.sum() - np.trace(cov)) / (c * (c - 1)))


def centred(a: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=0, keepdims=True)
    return a - a.mean(axis=1, keepdims=True)


def main() -> None:
    args = trace_arguments(__doc__.splitlines()[0], match="block.0.2")
    warnings.simplefilter("ignore")
    for name in args.models.split(","):
        graph = load(exports.exported(name, args.size), batch_size=args.batch_size)
        result = propagate(graph)
        ctx = rule_context(graph, graph.order[-1], result)
        found = pairs(graph, args.match)
        data = collect(graph, sorted({t for _, z, f in found for t in (z, f)}), args.runs)
        print(f"{name} {args.size}x{args.size}, {args.runs} batches of {args.batch_size}")
        print(f"{'f(z)':56} {'K':>5} {'lam f':>7} {'gauss':>7} {'analysis':>8} {'R2':>5}"
              f" {'Var s3':>7} {'gauss':>7} {'m.s3':>7}")
        for op, z_name, f_name in found:
            z, f = data[z_name], data[f_name]
            s, c = z.shape[:2]
            a, var_f = hermite(FUNCTIONS[op])
            powers = rho_powers(z)
            weights = a[1:] ** 2 / np.array([factorial(n) for n in range(1, ORDERS + 1)])
            gauss = float((powers @ weights).mean() / var_f**2)
            zf, ff = z.reshape(s, c, -1), f.reshape(s, c, -1)
            e = ((ff - ff.mean(axis=(0, 2))[None, :, None]) ** 2).mean(axis=2) / ff.var(axis=(0, 2))
            m = zf.mean(axis=2)
            d = zf - m[..., None]
            x = np.stack([centred(m), centred((d**2).mean(axis=2)),
                          centred((d**3).mean(axis=2))], -1).reshape(-1, 3)
            y = centred(e).reshape(-1)
            coef, *_ = np.linalg.lstsq(x, y, rcond=None)
            r2 = 1 - float((y - x @ coef).var() / y.var())
            joint = 2 * coef[0] * coef[2] * float(np.mean(x[:, 0] * x[:, 2]))
            law = sample_energy.law(ctx, f_name)
            analysis = float(np.mean(law[1])) if law is not None else float("nan")
            print(f"{f_name[-56:]:56} {zf.shape[2]:5} {lam(e):7.4f} {gauss:7.4f} {analysis:8.4f}"
                  f" {r2:5.2f} {x[:, 2].var():7.4f} {6 * powers[:, 2].mean():7.4f} {joint:7.4f}")


if __name__ == "__main__":
    main()
