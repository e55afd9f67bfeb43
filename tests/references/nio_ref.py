"""NIO (GradCosine) in PyTorch, from Yang et al. (NeurIPS 2022), Algorithm 1 and the authors'
ImageNet configuration (D = 4 sub-batches, overlap r = 0.2, gamma = 10, objective
GradCosine + sum of sub-batch gradient norms):

    per-sample losses of one forward of batch t;  l = B // D
    sub-batch i: samples [(1 - r) l i, (1 + r) l (i + 1)) (the first from 0, the last to B)
    g_i = grad of sub-batch i's mean loss (create_graph);  n_i = ||g_i||
    GradCosine = mean over i != j of <g_i, g_j> / (n_i n_j);  gnorm = mean n_i
    if gnorm > gamma: minimise gnorm (constraint step)
    else: minimise -(GradCosine + gn_mul sum_i n_i)   ('gc': gn_mul = 0)

with GradInit's Adam on the scales (:class:`~tests.references.common.PaperAdam`).
"""

from __future__ import annotations

import torch

from .common import PaperAdam, Scales, as_torch, cross_entropy, lower_bounds


def sub_batches(batch_size, splits, overlap):
    length = int(batch_size / splits)
    out = []
    for i in range(splits):
        start = 0 if i == 0 else int((1 - overlap) * length * i)
        stop = batch_size if i == splits - 1 else int((1 + overlap) * length * (i + 1))
        out.append((start, stop))
    return out


def gradient_cosine(twin, theta, x, y, splits, overlap, *, create_graph):
    """(sub-batch gradient norms n_i, GradCosine) of one forward of the batch (x, y)."""
    tensors = list(theta.values())
    losses = cross_entropy(twin.forward, theta, x, y, reduction="none")
    flat = []
    for start, stop in sub_batches(len(x), splits, overlap):
        grads = torch.autograd.grad(losses[start:stop].mean(), tensors, retain_graph=True,
                                    create_graph=create_graph)
        flat.append(torch.cat([g.reshape(-1) for g in grads]))
    g = torch.stack(flat)
    norms = g.norm(dim=1)
    cosines = (g @ g.T) / (norms[:, None] * norms[None, :])
    d = len(flat)
    return norms, (cosines.sum() - cosines.diagonal().sum()) / (d * d - d)


def nio_reference(twin, source, *, iterations, lr=3e-3, gamma=10.0, splits=4, overlap=0.2,
                  gn_mul=1.0, objective="gc_gn_sqrt", min_scale=0.01, clip=1.0,
                  dtype=torch.float64):
    scales = Scales(twin.parameters(dtype), twin.kinds)
    adam = PaperAdam(lower_bounds(scales, twin.kinds, min_scale), lr=lr, clip=clip)
    weight = gn_mul if objective == "gc_gn_sqrt" else 0.0
    history, records = [], []
    for t in range(iterations):
        x, y = as_torch(source.batch(t), dtype)
        norms, gradcosine = gradient_cosine(twin, scales.theta(), x, y, splits, overlap,
                                            create_graph=True)
        gnorm = norms.mean()
        constraint = float(gnorm.detach()) > gamma
        loss = gnorm if constraint else -gradcosine - weight * norms.sum()
        alpha_grads = torch.autograd.grad(loss, scales.alphas())
        scales.set(adam.step(list(scales.values()), [float(a) for a in alpha_grads], constraint))
        history.append(scales.values())
        records.append({"constraint": constraint, "gradcosine": float(gradcosine.detach()),
                        "gnorm": float(gnorm.detach())})
    return history, records, scales
