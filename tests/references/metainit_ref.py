"""MetaInit in PyTorch, from Dauphin & Schoenholz (2019), Section 2-3 and their Figure 2:

    GQ(theta) = (1/N) || (g - H g) / (g + eps) - 1 ||_1,   eps = eps0 (2 [g >= 0] - 1) (constant)

over all N parameter elements, with H g the exact Hessian-vector product (the gradient of
||g||^2 / 2, by double backward) and GQ differentiated by a third backward. Only tensors of rank
>= 2 are tuned, by sign-SGD with momentum on their norms:

    s_i = sign(<dGQ/dp_i, p_i> / ||p_i||);   m_i <- momentum m_i - lr s_i;   ||p_i|| <- ||p_i|| + m_i

Batch t is the source's batch t (onnxinit's indexing; the paper draws Gaussian inputs and
random labels, which is what the source's synthetic batches are).
"""

from __future__ import annotations

import numpy as np
import torch

from .common import as_torch, cross_entropy


def gradient_quotient(forward, theta, x, y, eps):
    tensors = list(theta.values())
    loss = cross_entropy(forward, theta, x, y)
    grads = torch.autograd.grad(loss, tensors, create_graph=True)
    products = torch.autograd.grad(sum((g * g).sum() / 2 for g in grads), tensors,
                                   create_graph=True)
    total = sum(((g - h) / (g + eps * (2 * (g >= 0).to(g.dtype) - 1)) - 1).abs().sum()
                for g, h in zip(grads, products))
    return total / sum(p.numel() for p in tensors), loss


def metainit_reference(twin, source, *, iterations, lr=0.1, momentum=0.9, eps=1e-5,
                       dtype=torch.float64):
    """As the paper's code: the parameters are the leaves; after every step each tuned tensor p
    is multiplied by (||p|| + m) / ||p|| (a negative new norm flips its sign, as there). Returns
    the scale of every tuned tensor after every step, alpha_i = <p_i, p0_i> / ||p0_i||^2 (p_i
    stays parallel to p0_i), per-step records, and the tuned names."""
    params = {n: p.detach().clone().requires_grad_(True) for n, p in twin.parameters(dtype).items()}
    tuned = [n for n, p in params.items() if p.dim() >= 2 and float(p.detach().norm()) > 0]
    initial = {n: params[n].detach().clone() for n in tuned}
    memory = {n: 0.0 for n in tuned}
    history, records = [], []
    for t in range(iterations):
        x, y = as_torch(source.batch(t), dtype)
        gq, loss = gradient_quotient(twin.forward, params, x, y, eps)
        grads = torch.autograd.grad(gq, [params[n] for n in tuned])
        with torch.no_grad():
            for n, g in zip(tuned, grads):
                p = params[n]
                norm = float(p.norm())
                memory[n] = momentum * memory[n] - lr * float(torch.sign((p * g).sum() / norm))
                p.mul_((norm + memory[n]) / norm)
        history.append(np.array([float((params[n].detach() * initial[n]).sum()
                                       / (initial[n] * initial[n]).sum()) for n in tuned]))
        records.append({"gq": float(gq.detach()), "loss": float(loss.detach())})
    return history, records, tuned
