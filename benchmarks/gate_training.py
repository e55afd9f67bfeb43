"""Does a network train? The label ``benchmarks/gate_calibration.py`` calibrates ``check`` against.

Protocol (fixed, the same for every network of ``gate_models.NETWORKS``):

- data: scikit-learn's digits (1797 8x8 images, 10 classes, shipped with the package), a
  stratified 80/20 split (seed 0), shaped for the network by ``gate_models.as_kind``;
- training: seed 0, plain SGD with momentum 0.9 and no weight decay, batch 32 drawn from a
  seeded shuffle, cross-entropy, at most ``STEPS`` = 300 steps per learning rate; the test
  accuracy is evaluated every ``EVAL_EVERY`` = 25 steps (``module.eval()``, so BatchNormalization
  uses its running statistics);
- learning rates ``LEARNING_RATES`` = 0.01, 0.1, 0.001 are tried in that order; a run stops early
  when its accuracy reaches ``TRAINABLE_ACCURACY`` or its loss stops being finite (diverged);
- **trainable**: some learning rate reaches a test accuracy >= 50% (chance is 10%) within the
  budget. The sweep stops at the first learning rate that does.

Transformers (any network with an attention module, :func:`is_transformer`) train with their
own standard recipe instead of SGD, as BERT, GPT-2 and ViT were trained: AdamW (betas 0.9/0.999,
weight decay 0.01), linear warm-up over the first ``WARMUP_STEPS`` = 30 steps (10% of the
budget) then linear decay to 0 at ``STEPS``, gradient-norm clipping at 1, learning rates
``TRANSFORMER_LEARNING_RATES`` = 1e-3, 3e-4, 1e-4 in that order; the rest (data, batch, steps,
evaluation, threshold) is unchanged. SGD is a protocol artefact for attention networks (a 4-layer
BERT reached 23% in 300 SGD steps at every rate): the label should say whether a network trains
with the recipe it would be trained with. Recurrent networks (``nn.LSTM``/``nn.GRU``/``nn.RNN``)
train with the same adaptive recipe: under this SGD protocol a 2-layer LSTM with PyTorch's
default init reached 39% at lr 0.01 and 52% at 0.1 (the recurrent recipe is Adam, or SGD at lr
1 with clipping as in Zaremba et al. 2014, neither of which this sweep covers).
"""

from __future__ import annotations

import math
import time

import numpy as np

import gate_models

STEPS = 300
BATCH = 32
EVAL_EVERY = 25
LEARNING_RATES = (0.01, 0.1, 0.001)
MOMENTUM = 0.9
TRAINABLE_ACCURACY = 0.5
SEED = 0

PROTOCOL = {"steps": STEPS, "batch": BATCH, "eval_every": EVAL_EVERY,
            "learning_rates": list(LEARNING_RATES), "momentum": MOMENTUM,
            "trainable_accuracy": TRAINABLE_ACCURACY, "seed": SEED}

TRANSFORMER_LEARNING_RATES = (1e-3, 3e-4, 1e-4)
WARMUP_STEPS = 30
TRANSFORMER_PROTOCOL = {"steps": STEPS, "batch": BATCH, "eval_every": EVAL_EVERY,
                        "learning_rates": list(TRANSFORMER_LEARNING_RATES), "optimizer": "adamw",
                        "betas": [0.9, 0.999], "weight_decay": 0.01, "warmup_steps": WARMUP_STEPS,
                        "schedule": "linear warm-up, linear decay", "clip_grad_norm": 1.0,
                        "trainable_accuracy": TRAINABLE_ACCURACY, "seed": SEED}


def is_transformer(module) -> bool:
    """Whether ``module`` trains with the adaptive recipe: it has an attention module (a class
    named ``*Attention*``: ``nn.MultiheadAttention``, Hugging Face's
    ``BertSelfAttention``/``GPT2Attention``, torchvision's ``ShiftedWindowAttention``) or a
    recurrent one (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``)."""
    import torch

    return any("Attention" in type(m).__name__ or isinstance(m, torch.nn.RNNBase)
               for m in module.modules())


def protocol(name: str) -> dict:
    """The protocol ``name`` is trained with: the transformer recipe or SGD."""
    module, _ = gate_models.NETWORKS[name](SEED)
    return TRANSFORMER_PROTOCOL if is_transformer(module) else PROTOCOL


def _optimizer(module, lr: float, recipe: dict):
    """(optimizer, learning-rate scheduler or None) of ``recipe``."""
    import torch

    if recipe.get("optimizer") != "adamw":
        return torch.optim.SGD(module.parameters(), lr=lr, momentum=recipe["momentum"]), None
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, betas=tuple(recipe["betas"]),
                                  weight_decay=recipe["weight_decay"])
    warmup, steps = recipe["warmup_steps"], recipe["steps"]

    def factor(step: int) -> float:  # LambdaLR's step counts from 0 before the first update
        return (step + 1) / warmup if step < warmup else max(0.0, (steps - step) / (steps - warmup))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _accuracy(module, x, y) -> float:
    import torch

    # TransformerEncoderLayer's inference fast path reads norm1.eps, which the no-LayerNorm
    # variants (Identity in place of LayerNorm) do not have; the slow path computes the same
    torch.backends.mha.set_fastpath_enabled(False)
    module.eval()
    with torch.no_grad():
        correct = sum(int((module(x[i:i + 256]).argmax(1) == y[i:i + 256]).sum())
                      for i in range(0, len(y), 256))
    module.train()
    return correct / len(y)


def train_once(name: str, lr: float, data, seed: int = SEED) -> dict:
    """One run at learning rate ``lr``: best test accuracy, steps run, divergence, seconds
    (``seed``: the weights' and the batches' order; the label uses ``SEED``)."""
    import torch

    module, kind = gate_models.NETWORKS[name](seed)
    x_train_raw, y_train, x_test_raw, y_test = data
    x_train = gate_models.as_kind(x_train_raw, kind, x_train_raw)
    x_test = gate_models.as_kind(x_test_raw, kind, x_train_raw)
    y_train, y_test = torch.as_tensor(y_train), torch.as_tensor(y_test)
    recipe = TRANSFORMER_PROTOCOL if is_transformer(module) else PROTOCOL
    optimizer, scheduler = _optimizer(module, lr, recipe)
    rng = np.random.default_rng(seed)
    order, cursor = rng.permutation(len(y_train)), 0
    start = time.perf_counter()
    best, accuracies, diverged, step, loss_value = 0.0, [], False, 0, math.nan
    module.train()
    for step in range(1, STEPS + 1):
        if cursor + BATCH > len(order):
            order, cursor = rng.permutation(len(y_train)), 0
        batch = torch.as_tensor(order[cursor:cursor + BATCH])
        cursor += BATCH
        loss = torch.nn.functional.cross_entropy(module(x_train[batch]), y_train[batch])
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            diverged = True
            break
        optimizer.zero_grad()
        loss.backward()
        if recipe.get("clip_grad_norm"):
            torch.nn.utils.clip_grad_norm_(module.parameters(), recipe["clip_grad_norm"])
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if step % EVAL_EVERY == 0:
            accuracies.append(_accuracy(module, x_test, y_test))
            best = max(best, accuracies[-1])
            if best >= TRAINABLE_ACCURACY:
                break
    return {"lr": lr, "best_accuracy": best, "accuracies": accuracies, "steps": step,
            "diverged": diverged, "last_loss": loss_value if math.isfinite(loss_value) else None,
            "seconds": round(time.perf_counter() - start, 1)}


def train(name: str, data=None) -> dict:
    """The learning-rate sweep of ``name`` (stops at the first rate that trains)."""
    data = data if data is not None else gate_models.digits(SEED)
    recipe = protocol(name)
    runs = []
    for lr in recipe["learning_rates"]:
        runs.append(train_once(name, lr, data))
        if runs[-1]["best_accuracy"] >= TRAINABLE_ACCURACY:
            break
    best = max(runs, key=lambda r: r["best_accuracy"])
    return {"trainable": best["best_accuracy"] >= TRAINABLE_ACCURACY,
            "best_accuracy": best["best_accuracy"], "best_lr": best["lr"], "runs": runs,
            "protocol": recipe}
