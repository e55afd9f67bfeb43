"""The backward analysis's parameter gradients against PyTorch's float64 autograd, for the
Hugging Face models of ``benchmarks/unseen_exports.py`` (built from config objects, seed 0,
training mode), where the project's own autodiff cannot run the export (RWKV's token shift is a
Pad by a negative amount, which it refuses).

    python benchmarks/torch_parameter_gradients.py --models rwkv --batches 8

For each parameter use: the predicted variance of dL/dW over its elements (``analyze
--backward``, cross-entropy over the last axis with uniform labels, batch 8), the variance
measured in float64 with the same loss on ``--batches`` batches of 8 uniformly drawn token ids,
their ratio and the predicted update ratio ``rms(dL/dW) / rms(W)`` that ``check``'s
ONNXINIT005/006 compare. A parameter used several times (RWKV's ``time_first`` at each step)
is measured summed over its uses, so its per-use rows are not comparable.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import unseen_exports  # noqa: E402


def measured(name: str, batches: int, batch: int = 8) -> dict[str, float]:
    """{parameter: variance of its gradient over elements and batches}, float64 autograd."""
    import torch

    torch.manual_seed(0)
    module, shape, vocab = unseen_exports.build(name)
    module.train(True)
    module = module.double()
    rng = np.random.default_rng(1)
    sums: dict[str, list[float]] = {}
    for _ in range(batches):
        ids = torch.from_numpy(rng.integers(0, vocab, (batch, *shape)))
        out = module(ids)
        classes = out.shape[-1]
        labels = torch.from_numpy(rng.integers(0, classes, out.shape[:-1]))
        loss = torch.nn.functional.cross_entropy(out.reshape(-1, classes), labels.reshape(-1))
        module.zero_grad()
        loss.backward()
        for key, p in module.named_parameters():
            if p.grad is not None:
                g = p.grad.detach().numpy()
                acc = sums.setdefault(key, [0.0, 0.0, 0])
                acc[0] += float(g.sum())
                acc[1] += float(np.square(g).sum())
                acc[2] += g.size
    return {key: s / n - (t / n) ** 2 for key, (t, s, n) in sums.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="rwkv")
    parser.add_argument("--batches", type=int, default=8)
    args = parser.parse_args()
    from onnxinit import analyze

    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / f"{name}.onnx"
            unseen_exports.export(name, "train", path, unseen_exports.Variant())
            predicted = analyze(path, batch_size=8, backward=True).backward.parameters
        found = measured(name, args.batches)
        print(f"\n{name}: parameter | role | predicted | measured | ratio | update ratio")
        for p in predicted:
            m = found.get(p.name) or found.get(p.name.removeprefix("model."))
            ratio = f"{p.grad_var / m:.3g}" if m else "-"
            meas = "-" if m is None else f"{m:.3e}"
            update = "-" if p.update_ratio is None else f"{p.update_ratio:.3g}"
            print(f"{p.name} | {p.role} | {p.grad_var:.3e} | {meas} | {ratio} | {update}")


if __name__ == "__main__":
    main()
