"""The terms of each BatchNorm's backward step, measured in float64 autograd (torch) on a
torchvision ResNet in training mode: what ``gradrules/normalization.py`` and
``gradrules/batch_share.py`` predict term by term (docs/design.md, "The backward analysis").

    python benchmarks/backward_batchnorm_terms.py --model resnet50 --size 32 --batches 16

Per BatchNorm (M values per channel), with ``dx = gamma/sigma_b (dy - mean(dy) - x_hat
mean(dy x_hat))``: E[dy^2]; the batch mean's and the x_hat component's parts of it in units
of ``E[dy^2] / M`` (the plain rule: about 1 and 1; after ``relu' g`` with g of zero batch
mean: 0.50 and 0.68); the kept share; ``r = B M / P`` (B the variance of the batch mean of
the input, P its variance over all values; 1 for independent values); ``E[1/sigma_b^2] P``
(``M / (M - 3)`` for independent Gaussian values); and the correlation of ``1/sigma_b^2`` with
the kept part (``E[inv kept] / (E[inv] E[kept])``). Cross-entropy with uniform labels,
inputs N(0, 1), the model's default initialization (seed 0).
"""

from __future__ import annotations

import argparse


def measure(model, size: int, batch: int, batches: int, classes: int = 1000) -> dict:
    """{BatchNorm name: per-batch, per-channel tensors of the terms}."""
    import torch

    bns = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    seen = {}

    def hook(module, inputs, output):
        inputs[0].retain_grad()
        output.retain_grad()
        seen[module] = (inputs[0], output)
        return output.clone()  # in-place ReLUs and residual adds modify the clone

    for _, m in bns:
        m.register_forward_hook(hook)
    terms = {n: [] for n, _ in bns}
    rng = torch.Generator().manual_seed(1)
    for _ in range(batches):
        x = torch.randn(batch, 3, size, size, generator=rng, dtype=torch.float64)
        labels = torch.randint(0, classes, (batch,), generator=rng)
        seen.clear()
        torch.nn.functional.cross_entropy(model(x), labels).backward()
        for name, m in bns:
            xi, yo = seen[m]
            c = xi.shape[1]
            values = xi.detach().transpose(0, 1).reshape(c, -1)
            dy = yo.grad.transpose(0, 1).reshape(c, -1)
            mean, var = values.mean(1, keepdim=True), values.var(1, unbiased=False, keepdim=True)
            x_hat = (values - mean) / (var + m.eps).sqrt()
            terms[name].append(dict(dy2=(dy**2).mean(1), mean2=dy.mean(1) ** 2,
                                    along2=(dy * x_hat).mean(1) ** 2, inv=1 / (var[:, 0] + m.eps),
                                    x2=(values**2).mean(1), bmean=mean[:, 0]))
        model.zero_grad(set_to_none=True)
    return {n: {k: torch.stack([t[k] for t in v]) for k in v[0]} | {"M": seen[m][0].numel()
                                                                  // seen[m][0].shape[1]}
            for (n, v), (_, m) in zip(terms.items(), bns)}


def table(found: dict) -> list[str]:
    rows = ["| BatchNorm | M | E[dy^2] | batch mean / (E/M) | along x_hat / (E/M) | kept "
            "| r | E[1/sigma_b^2] P (M/(M-3)) | corr(1/sigma_b^2, kept) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, t in found.items():
        m = t["M"]
        dy2 = float(t["dy2"].mean())
        kept = t["dy2"] - t["mean2"] - t["along2"]
        p = t["x2"].mean(0) - t["bmean"].mean(0) ** 2
        r = float((t["bmean"].var(0) * m / p).mean())
        inv_p = float((t["inv"].mean(0) * p).mean())
        corr = float(((t["inv"] * kept).mean(0) / (t["inv"].mean(0) * kept.mean(0))).mean())
        rows.append(f"| {name} | {m} | {dy2:.3e} | {float(t['mean2'].mean()) * m / dy2:.3f} "
                    f"| {float(t['along2'].mean()) * m / dy2:.3f} | {float(kept.mean()) / dy2:.3f} "
                    f"| {r:.3f} | {inv_p:.3f} ({m / (m - 3) if m > 3 else float('inf'):.3f}) "
                    f"| {corr:.3f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50", help="a torchvision ResNet")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=16)
    args = parser.parse_args()
    import torch
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)(weights=None).double().train()
    print("\n".join(table(measure(model, args.size, args.batch_size, args.batches))))


if __name__ == "__main__":
    main()
