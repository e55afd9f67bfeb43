"""Cost of the data-driven methods per iteration, against GradInit written in PyTorch.

Models (no normalization tricks; the same weights on both sides):

- ResNet-20 without BN: ``sample_models/resnet20_nobn.onnx``; its torch twin is the module of
  ``sample_models/build.py`` with the ONNX file's values loaded by name.
- BERT-small: 4 post-LN encoder layers, hidden 256, 4 heads, FFN 1024, sequence 128, vocabulary
  30522, learned positions, a [CLS] pooler (tanh) and a 2-class head; written here in torch from
  scratch (no transformers needed) and exported with the TorchScript exporter.

For every registered method among lsuv, gradinit, metainit, nio, the method's ``plan`` runs on
the loaded graph (synthetic data, the same batch size as torch). Seconds per iteration:

- methods with an iteration-count option (``<method>_iterations`` or ``<method>_steps``): the
  marginal cost ``(t(k2) - t(k1)) / (k2 - k1)``, which removes set-up (graph building, sessions),
  each t the fastest of ``--repeats`` runs (a shared machine's load only ever adds time);
- lsuv: total time / number of forward passes it made (its iterations are forward passes).

Torch GradInit follows Algorithm 1 of Zhu et al. (docs/methods.md "gradinit", sgd variant): one scale
per parameter tensor, theta = alpha * p0; g = dL(S)/dtheta with ``create_graph=True``; if
||g||_2 > gamma, an Adam step on alpha minimising ||g||_2 (exact double backward); else
theta' = theta - eta * gamma * g/||g||_2 with the step held constant and an Adam step on
L(S~; theta')/eta, where S~ is half of S and half of the next batch; gradients of alpha clipped
to [-1, 1], alpha clamped at 0.01 (weights) or 0 (biases). Defaults: lr 1e-2, eta 0.1, gamma 1.
Its seconds per iteration are the median over ``--torch-iterations`` iterations after two
warm-up iterations.

Which branch an iteration takes changes its cost (the constraint step differentiates the gradient
norm: a double backward in torch, finite-difference Hessian-vector products in onnxinit), so
torch GradInit is timed three ways: ``default`` (gamma 1, eta 0.1), ``constraint`` (gamma 1e-12:
every iteration is a constraint step) and ``objective`` (gamma 1e8, eta 1e-9: every iteration
is an objective step of the default length eta * gamma = 0.1). A registered method that declares
``<method>_gamma`` and ``<method>_eta`` is timed the same three ways; each ratio divides by torch's
time for the same branch.

The table prints each method's seconds per iteration and the ratio to torch GradInit's, all
measured in this one run on this machine (ratios, not absolute timings, are the result).

    python benchmarks/method_cost.py            # ResNet-20 batch 64, BERT-small batch 8
    python benchmarks/method_cost.py --quick    # batch 16 / 4, fewer iterations
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "sample_models"))

CANDIDATES = ("lsuv", "gradinit", "metainit", "nio")


# --- models -------------------------------------------------------------------------------------


def bert_small(vocab: int = 30522, hidden: int = 256, layers: int = 4, heads: int = 4,
               ffn: int = 1024, seq: int = 128, classes: int = 2):
    """A BERT-small-sized post-LN encoder classifier (torch module)."""
    import torch
    from torch import nn

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = (nn.Linear(hidden, hidden) for _ in range(3))
            self.out = nn.Linear(hidden, hidden)
            self.ln1 = nn.LayerNorm(hidden)
            self.ff1, self.ff2 = nn.Linear(hidden, ffn), nn.Linear(ffn, hidden)
            self.ln2 = nn.LayerNorm(hidden)

        def forward(self, x):
            b, t, h = x.shape
            d = h // heads

            def split(y):
                return y.reshape(b, t, heads, d).transpose(1, 2)

            q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
            attention = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
            y = (attention @ v).transpose(1, 2).reshape(b, t, h)
            x = self.ln1(x + self.out(y))
            return self.ln2(x + self.ff2(torch.nn.functional.gelu(self.ff1(x))))

    class BertSmall(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab, hidden)
            self.position = nn.Parameter(torch.randn(1, seq, hidden) * 0.02)
            self.ln = nn.LayerNorm(hidden)
            self.layers = nn.ModuleList(Layer() for _ in range(layers))
            self.pooler = nn.Linear(hidden, hidden)
            self.head = nn.Linear(hidden, classes)

        def forward(self, input_ids):
            x = self.ln(self.embed(input_ids) + self.position)
            for layer in self.layers:
                x = layer(x)
            return self.head(torch.tanh(self.pooler(x[:, 0])))

    return BertSmall()


def export(module, example, path: Path, input_name: str) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), input_names=[input_name],
                          output_names=["logits"], dynamo=False, opset_version=17,
                          dynamic_axes={input_name: {0: "batch"}, "logits": {0: "batch"}},
                          keep_initializers_as_inputs=False, do_constant_folding=False)


def resnet20_pair():
    """(torch module, ONNX path): the sample ResNet-20 without BN and its torch twin."""
    from build import _modules

    from onnxinit.adapters.torch import load_into

    path = ROOT / "sample_models" / "resnet20_nobn.onnx"
    module = _modules()[2](bn=False)
    load_into(module, str(path), strict=True)
    return module, path


# --- torch GradInit (Algorithm 1) ------------------------------------------------------------


class TorchGradInit:
    """GradInit's scale learning (see the module docstring) on a torch module."""

    def __init__(self, module, lr=1e-2, eta=0.1, gamma=1.0, min_weight=0.01, min_bias=0.0):
        import torch

        self.module, self.eta, self.gamma = module, eta, gamma
        self.p0 = {n: p.detach().clone() for n, p in module.named_parameters()
                   if p.is_floating_point() and float(p.detach().norm()) > 0}
        self.alpha = {n: torch.ones((), requires_grad=True) for n in self.p0}
        self.lower = {n: min_bias if n.endswith("bias") and p.ndim == 1 else min_weight
                      for n, p in self.p0.items()}
        self.optimizer = torch.optim.Adam(self.alpha.values(), lr=lr, betas=(0.9, 0.999),
                                          eps=1e-8)
        self.constraint_steps = 0

    def _loss(self, theta, x, y):
        import torch
        from torch.func import functional_call

        return torch.nn.functional.cross_entropy(functional_call(self.module, theta, (x,)), y)

    def step(self, s, s_tilde) -> None:
        """One iteration on batch ``s`` = (x, y) and ``s_tilde`` (half of s, half new)."""
        import torch

        theta = {n: self.alpha[n] * p for n, p in self.p0.items()}
        loss = self._loss(theta, *s)
        grads = torch.autograd.grad(loss, list(theta.values()), create_graph=True)
        norm = torch.sqrt(sum((g * g).sum() for g in grads))
        self.optimizer.zero_grad()
        if float(norm.detach()) > self.gamma:
            self.constraint_steps += 1
            norm.backward()
        else:
            scale = self.gamma / norm.detach()
            moved = {n: theta[n] - self.eta * scale * g.detach()
                     for n, g in zip(theta, grads)}
            (self._loss(moved, *s_tilde) / self.eta).backward()
        with torch.no_grad():
            for a in self.alpha.values():
                if a.grad is not None:
                    a.grad.clamp_(-1.0, 1.0)
            self.optimizer.step()
            for n, a in self.alpha.items():
                a.clamp_(min=self.lower[n])


# gamma/eta pairs that force one branch of every iteration: (gamma, eta) with eta * gamma = 0.1,
# the default step length, so the objective branch moves theta as far as the default does
BRANCHES = {"default": (1.0, 0.1), "constraint": (1e-12, 0.1), "objective": (1e8, 1e-9)}


def torch_seconds_per_iteration(module, source, iterations: int, gamma: float = 1.0,
                                eta: float = 0.1) -> tuple[float, int]:
    """Median seconds per torch GradInit iteration (after two warm-up iterations), and its constraint-step
    count, on the batches of ``source`` (an onnxinit DataSource)."""
    import torch

    def tensors(batch):
        (x,) = batch.feeds.values()
        return torch.from_numpy(x), torch.from_numpy(batch.labels)

    def pair(t):
        s, nxt = tensors(source.batch(2 * t)), tensors(source.batch(2 * t + 1))
        half = len(s[0]) // 2
        return s, (torch.cat([s[0][:half], nxt[0][half:]]), torch.cat([s[1][:half], nxt[1][half:]]))

    module.train()
    gradinit = TorchGradInit(module, gamma=gamma, eta=eta)
    for t in range(2):  # warm-up: allocator, thread pool, autograd caches
        gradinit.step(*pair(t))
    gradinit.constraint_steps = 0
    batches = [pair(t + 2) for t in range(iterations)]
    seconds = []
    for s, s_tilde in batches:
        start = time.perf_counter()
        gradinit.step(s, s_tilde)
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds)), gradinit.constraint_steps


# --- onnxinit methods ---------------------------------------------------------------------------


def iteration_option(name: str) -> str | None:
    """The method's iteration-count option (``<name>_iterations`` or ``<name>_steps``)."""
    from onnxinit.methods import METHODS

    for f in dataclasses.fields(METHODS[name][1]):
        if f.name.startswith(f"{name}_") and f.name.endswith(("_iterations", "_steps")) \
                and f.name != "lsuv_max_iterations":
            return f.name
    return None


def branch_options(name: str, branch: str) -> dict | None:
    """Options forcing ``branch`` (see BRANCHES) when the method declares ``<name>_gamma`` and
    ``<name>_eta``; {} for the default branch; None when it cannot be forced."""
    from onnxinit.methods import METHODS

    if branch == "default":
        return {}
    fields = {f.name for f in dataclasses.fields(METHODS[name][1])}
    if {f"{name}_gamma", f"{name}_eta"} <= fields:
        gamma, eta = BRANCHES[branch]
        return {f"{name}_gamma": gamma, f"{name}_eta": eta}
    return None


def onnxinit_seconds_per_iteration(graph, name: str, k1: int, k2: int,
                                   extra: dict | None = None,
                                   repeats: int = 1) -> tuple[float, str]:
    """(seconds per iteration, how it was measured) of registered method ``name``."""
    from onnxinit.methods import METHODS, make_options

    plan_fn = METHODS[name][0]
    base = {"seed": 0, **(extra or {})}
    if f"{name}_batch_size" in {f.name for f in dataclasses.fields(METHODS[name][1])}:
        base[f"{name}_batch_size"] = graph.batch_size
    if name == "lsuv":
        start = time.perf_counter()
        plan = plan_fn(graph, make_options(name, base))
        seconds = time.perf_counter() - start
        passes = sum(len(e.get("trajectory", [0])) for e in plan.report["layers"])
        return seconds / passes, f"total / {passes} forward passes"
    option = iteration_option(name)
    if option is None:
        start = time.perf_counter()
        plan_fn(graph, make_options(name, base))
        return time.perf_counter() - start, "whole run (no iteration option)"
    times = {k1: math.inf, k2: math.inf}
    for _ in range(repeats):  # the fastest of the repeats: least disturbed by other load
        for k in (k1, k2):
            start = time.perf_counter()
            plan_fn(graph, make_options(name, {**base, option: k}))
            times[k] = min(times[k], time.perf_counter() - start)
    return (times[k2] - times[k1]) / (k2 - k1), \
        f"marginal, {option} {k1} -> {k2}, best of {repeats}"


# --- the run ------------------------------------------------------------------------------------


def measure_model(label: str, module, path: Path, batch_size: int, args) -> list[tuple]:
    """Rows (model, method, branch, s/it, ratio, how) for one model."""
    import copy

    from onnxinit.data import data_source
    from onnxinit.graph import load
    from onnxinit.methods import METHODS

    graph = load(path, batch_size=batch_size)
    source = data_source(graph, batch_size=batch_size, seed=0)
    torch_s = {}
    rows = []
    for branch, (gamma, eta) in BRANCHES.items():
        seconds, constraint = torch_seconds_per_iteration(
            copy.deepcopy(module), source, args.torch_iterations, gamma, eta)
        torch_s[branch] = seconds
        rows.append((label, "torch gradinit", branch, seconds, 1.0,
                     f"median of {args.torch_iterations} its, {constraint} constraint steps"))
        print(f"  {label}: torch gradinit ({branch}) {seconds:.3f} s/it", file=sys.stderr,
              flush=True)
    for name in CANDIDATES:
        if name not in METHODS:
            rows.append((label, name, "", None, None, "not available"))
            continue
        for branch in BRANCHES:
            extra = branch_options(name, branch)
            if extra is None:
                continue
            try:
                seconds, how = onnxinit_seconds_per_iteration(graph, name, args.k1, args.k2,
                                                               extra, args.repeats)
            except Exception as exc:  # noqa: BLE001  (a failing method is reported, not fatal)
                rows.append((label, name, branch, None, None,
                             f"failed: {type(exc).__name__}: {exc}"[:90]))
                continue
            rows.append((label, f"onnxinit {name}", branch, seconds, seconds / torch_s[branch],
                         how))
            print(f"  {label}: {name} ({branch}) {seconds:.3f} s/it", file=sys.stderr,
                  flush=True)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small batches, few iterations")
    parser.add_argument("--resnet-batch", type=int, default=64)
    parser.add_argument("--bert-batch", type=int, default=8)
    parser.add_argument("--torch-iterations", type=int, default=5)
    parser.add_argument("--k1", type=int, default=2, help="iterations of the short run")
    parser.add_argument("--k2", type=int, default=5, help="iterations of the long run")
    parser.add_argument("--repeats", type=int, default=2,
                        help="time each onnxinit run this many times and keep the fastest")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own)")
    parser.add_argument("--models", nargs="+", default=["resnet20", "bert_small"],
                        choices=["resnet20", "bert_small"])
    args = parser.parse_args(argv)
    if args.quick:
        args.resnet_batch, args.bert_batch = 16, 4
        args.torch_iterations, args.k1, args.k2, args.repeats = 3, 1, 3, 1
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if "resnet20" in args.models:
            module, path = resnet20_pair()
            rows += measure_model(f"ResNet-20 (no BN), batch {args.resnet_batch}", module, path,
                                  args.resnet_batch, args)
        if "bert_small" in args.models:
            module = bert_small()
            path = Path(tmp) / "bert_small.onnx"
            export(module, torch.zeros(2, 128, dtype=torch.int64), path, "input_ids")
            rows += measure_model(f"BERT-small (4x256, seq 128), batch {args.bert_batch}",
                                  module, path, args.bert_batch, args)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          "ratio = seconds per iteration / torch GradInit's on the same model and batch")
    print("| model | method | branch | s / iteration | ratio to torch GradInit | how |")
    print("|---|---|---|---|---|---|")
    for label, method, branch, seconds, ratio, how in rows:
        s = "" if seconds is None else f"{seconds:.4f}"
        r = "" if ratio is None else f"{ratio:.2f}"
        print(f"| {label} | {method} | {branch} | {s} | {r} | {how} |")


if __name__ == "__main__":
    main()
