"""GradInit in PyTorch, from Algorithm 1 of Zhu et al. (2021) and their Sections 3.3-3.5:

    for t = 1..T:
        S_t: a batch; L_t = L(S_t; theta_m); g_t = grad_theta L_t
        if ||g_t||_p > gamma:  m <- m - tau grad_m ||g_t||_p                       (constraint)
        else:  S~_t = S_t with half its samples replaced;
               m <- m - tau grad_m L(S~_t; theta_m - eta A[g_t]) / eta             (objective)
        clamp m at (alpha_min for weights, 0 for biases)

with A[g] = gamma g / ||g||_2 (SGD, p = 2) or sign(g) (Adam, p = 1), held constant (the paper's
stop-gradient), and the update "m <- m - tau grad" done by Adam with each scale's gradient clamped
to [-1, 1] (:class:`~tests.references.common.PaperAdam`). Everything runs in torch autograd: the
constraint gradient is a double backward.

Batches: S_t is the source's batch 2t; S~_t keeps the first half of S_t and takes the second
half of batch 2t + 1 (onnxinit's indexing of the same sample stream).
"""

from __future__ import annotations

import torch

from .common import PaperAdam, Scales, as_torch, cross_entropy, lower_bounds


def gradinit_reference(twin, source, *, iterations, lr=1e-2, eta=0.1, gamma=1.0, alg="sgd",
                       min_scale=0.01, clip=1.0, dtype=torch.float64):
    """The scales after every iteration (a list of arrays, in ``Scales.names`` order), the
    per-iteration records, and the Scales object."""
    scales = Scales(twin.parameters(dtype), twin.kinds)
    adam = PaperAdam(lower_bounds(scales, twin.kinds, min_scale), lr=lr, clip=clip)
    history, records = [], []
    for t in range(iterations):
        x, y = as_torch(source.batch(2 * t), dtype)
        x_new, y_new = as_torch(source.batch(2 * t + 1), dtype)
        half = len(x) // 2
        x_tilde, y_tilde = torch.cat([x[:half], x_new[half:]]), torch.cat([y[:half], y_new[half:]])
        theta = scales.theta()
        tensors = list(theta.values())
        loss = cross_entropy(twin.forward, theta, x, y)
        grads = torch.autograd.grad(loss, tensors, create_graph=True)
        if alg == "adam":
            norm = sum(g.abs().sum() for g in grads)
        else:
            norm = torch.sqrt(sum((g * g).sum() for g in grads))
        constraint = float(norm.detach()) > gamma
        if constraint:
            objective = norm
            value = None
        else:
            if alg == "adam":
                steps = [g.detach().sign() for g in grads]
            else:
                steps = [gamma * g.detach() / norm.detach() for g in grads]
            moved = {n: p - eta * s for (n, p), s in zip(theta.items(), steps)}
            objective = cross_entropy(twin.forward, moved, x_tilde, y_tilde) / eta
            value = float(objective.detach())
        alpha_grads = torch.autograd.grad(objective, scales.alphas())
        scales.set(adam.step(list(scales.values()), [float(g) for g in alpha_grads], constraint))
        history.append(scales.values())
        records.append({"constraint": constraint, "grad_norm": float(norm.detach()), "objective": value,
                        "loss": float(loss.detach())})
    return history, records, scales
