"""What in a sample's own values sets an element-wise chain's growth of the shared energy:
each BatchNorm -> activation chain (SiLU written as ``x * Sigmoid(x)``, HardSwish, Relu) of the
maps whose names contain ``--match``, measured by onnxruntime over ``--runs`` batches of
``--batch-size`` seeded N(0, 1) inputs (the analysis's training semantics), against surrogates.

With ``e_nc = mean_p (f_ncp - mu_c)^2 / nu_c`` each sample's energy per channel and eta the mean
over pairs of distinct channels of ``Cov_n(e_nc, e_nc')`` (as ``shared_energy_trace.py``), the
chain's growth ``eta(f(z)) / eta(z)``:

* ``meas``: on the measured values themselves;
* ``gauss``: each sample's channel ``z_nc.`` replaced by a Gaussian of its own mean and variance
  over the positions (Gauss-Hermite), what ``rules/chain_response.py`` assumes;
* ``edge``: the same with the first-order Edgeworth density of the sample's own k3 and k4;
* ``perm``: each sample's standardized shape ``(z_ncp - m_nc) / s_nc`` given to another sample
  of the same channel (the channel's shapes kept, their tie to the sample's energy broken);
* ``flip``: each shape's sign flipped (mean and variance kept: the odd part's share twice);
* ``pi``: the positional energy, the variance over a sample's positions of its channels'
  mean standardized square (``2 / C`` where positions share nothing), mean over samples;
* ``skew sd``: the spread over channels of the within-sample skewness (mean over samples;
  noise about ``sqrt(6 / (P N))``), and its correlation ``r`` and slope with ``3 b_c pi``,
  ``b_c`` each channel's regression of its standardized values on the positional energy (the
  skewness a positional energy with a per-channel offset gives).

    python benchmarks/chain_shapes.py --models efficientnet_b0 --size 224 --runs 8 \\
        --match features.6.2/
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from shared_energy_trace import trace_arguments  # noqa: E402

from onnxinit.feeds import synthetic_feeds  # noqa: E402
from onnxinit.graph import load  # noqa: E402
from onnxinit.measure import measurable_model  # noqa: E402
from onnxinit.runtime import make_session  # noqa: E402
from tests.real import exports  # noqa: E402
from tests.real.compare import seeded  # noqa: E402

_X, _W = np.polynomial.hermite_e.hermegauss(24)
_W = _W / _W.sum()
FUNCTIONS = {
    "SiLU": lambda x: x / (1.0 + np.exp(-x)),
    "HardSwish": lambda x: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0,
    "Relu": lambda x: np.maximum(x, 0.0),
}


def chains(graph, match: str) -> list[tuple[str, str]]:
    """(BatchNorm output of rank 4 with several positions, the activation after it)."""
    out = []
    for node_id in graph.order:
        node = graph.node(node_id)
        z = node.output[0] if node.op_type == "BatchNormalization" else None
        shape = graph.shape(z) if z else None
        if not shape or len(shape) != 4 or shape[2] * shape[3] < 2 or match not in z:
            continue
        users = {graph.node(c).op_type for c, _ in graph.consumers.get(z, [])}
        if "HardSwish" in users or "Relu" in users:
            out.append((z, "HardSwish" if "HardSwish" in users else "Relu"))
        elif "Sigmoid" in users and "Mul" in users:
            out.append((z, "SiLU"))
    return out


def eta(e: np.ndarray) -> float:
    """The mean over pairs of distinct channels of ``Cov_n(e_nc, e_nc')``, e [N, C]."""
    c = e - e.mean(axis=0)
    total = c.sum(axis=1)
    n, k = e.shape
    return float((total @ total - (c * c).sum()) / (n * k * (k - 1)))


def energies(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """e_nc from each sample's mean and mean square of f per channel [N, C]."""
    mu = first.mean(axis=0)
    nu = second.mean(axis=0) - mu**2
    return (second - 2 * mu * first + mu**2) / np.maximum(nu, 1e-300)


def moments(f, z: np.ndarray, shape=None, gauss: bool = False, edgeworth: bool = False):
    """Each sample's mean and mean square of f per channel [N, C] over the positions, one
    sample at a time (the maps of the first stages are large); ``shape`` [N, C, P] replaces
    each sample's standardized values, ``gauss`` integrates a Gaussian of each sample's own
    channel mean and variance instead, ``edgeworth`` its first-order Edgeworth density with
    the sample's own k3 and k4 (``phi(t) (1 + k3 He3(t) / 6 + k4 He4(t) / 24)``)."""
    first, second = np.empty(z.shape[:2]), np.empty(z.shape[:2])
    for n in range(z.shape[0]):
        v = np.asarray(z[n], np.float64)
        m = v.mean(axis=1, keepdims=True)
        s = np.maximum(v.std(axis=1, keepdims=True), 1e-12)
        if gauss or edgeworth:
            y = f(m + s * _X)  # [C, Q]
            w = np.broadcast_to(_W, y.shape)
            if edgeworth:
                u = (v - m) / s
                k3 = (u**3).mean(axis=1, keepdims=True)
                k4 = (u**4).mean(axis=1, keepdims=True) - 3.0
                w = _W * (1.0 + k3 * (_X**3 - 3 * _X) / 6 + k4 * (_X**4 - 6 * _X**2 + 3) / 24)
            first[n], second[n] = (y * w).sum(axis=1), (y * y * w).sum(axis=1)
            continue
        y = f(v if shape is None else m + s * np.asarray(shape[n], np.float64))
        first[n], second[n] = y.mean(axis=1), (y * y).mean(axis=1)
    return first, second


def row(z: np.ndarray, f, rng) -> dict:
    """The module docstring's columns for one chain, z [N, C, P] (float32)."""
    m = z.mean(axis=2, keepdims=True, dtype=np.float64)
    s = np.maximum(z.std(axis=2, keepdims=True, dtype=np.float64), 1e-12)
    u = ((z - m) / s).astype(np.float32)
    base = eta(energies(*moments(lambda x: x, z)))

    def growth(**kw) -> float:
        return eta(energies(*moments(f, z, **kw))) / base

    perm = np.argsort(rng.random(z.shape[:2]), axis=0)
    square = (u * u).mean(axis=1, dtype=np.float64)  # [N, P]
    dev = square - square.mean(axis=1, keepdims=True)
    pi = float(dev.var(axis=1).mean())
    b = np.einsum("ncp,np->c", u, dev) / (z.shape[0] * z.shape[2]) / max(
        float((dev * dev).mean()), 1e-300)
    skew = (u.astype(np.float64) ** 3).mean(axis=2).mean(axis=0)
    model = 3.0 * b * pi
    return {"eta": base, "meas": growth(), "gauss": growth(gauss=True),
            "edge": growth(edgeworth=True),
            "perm": growth(shape=np.take_along_axis(u, perm[..., None], axis=0)),
            "flip": growth(shape=-u), "pi": pi, "2/C": 2.0 / z.shape[1],
            "skew sd": float(skew.std()), "r": float(np.corrcoef(skew, model)[0, 1]),
            "slope": float(np.polyfit(model, skew, 1)[0])}


def main() -> None:
    args = trace_arguments(__doc__.splitlines()[0], match="features.6.2/")
    warnings.simplefilter("ignore")
    for name in args.models.split(","):
        graph = load(exports.exported(name, args.size), batch_size=args.batch_size)
        found = chains(graph, args.match)
        session = make_session(seeded(measurable_model(graph, [z for z, _ in found]), 0),
                               device="cpu")
        names = [o.name for o in session.get_outputs()]
        rng = np.random.default_rng(0)
        kept: dict[str, list] = {z: [] for z, _ in found}
        for _ in range(args.runs):
            values = dict(zip(names, session.run(names, synthetic_feeds(graph, rng=rng))))
            for z in kept:
                v = np.asarray(values.pop(z), np.float32)
                kept[z].append(v.reshape(v.shape[0], v.shape[1], -1))
        print(f"{name} {args.size}x{args.size}, {args.runs} batches of {args.batch_size}")
        print(f"{'BatchNorm output':56} {'f':9} {'eta':>6} {'meas':>6} {'gauss':>6} "
              f"{'edge':>6} {'perm':>6} {'flip':>6} {'pi':>6} {'2/C':>6} {'skew sd':>7} "
              f"{'r':>5} {'slope':>5}")
        for z, kind in found:
            got = row(np.concatenate(kept.pop(z)), FUNCTIONS[kind], np.random.default_rng(1))
            print(f"{z[-56:]:56} {kind:9} " + " ".join(
                f"{got[k]:{7 if k == 'skew sd' else 5 if k in ('r', 'slope') else 6}.3f}"
                for k in ("eta", "meas", "gauss", "edge", "perm", "flip", "pi", "2/C", "skew sd",
                          "r", "slope")), flush=True)


if __name__ == "__main__":
    main()
