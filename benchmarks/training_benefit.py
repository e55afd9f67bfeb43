"""Does a rescaled initialization train better? The papers' setting, scaled to a CPU.

Dataset: scikit-learn's ``load_digits`` (1797 8x8 grey digits, 10 classes, shipped inside the
package: nothing is downloaded), standardised with the training split's statistics, a stratified
80/20 split fixed by seed 0. Convolutional models see the digits upsampled (nearest) to
``--image`` x ``--image`` with three identical channels; the MLP sees the 64 pixels.

Models (PyTorch, no normalization layers, each with its framework's own default init):

- ``mlp``: ``--mlp-depth`` Linear layers of width ``--mlp-width`` with ReLU (or tanh) between
  them (PyTorch's default init shrinks the signal by about 1/6 per ReLU layer);
- ``resnet20``, ``resnet32``: CIFAR ResNets (3 stages of 3 or 5 basic blocks, 16/32/64 channels,
  1x1 projection shortcuts), convolutions with biases in place of BN, PyTorch's default init;
- ``resnet50``: torchvision's ResNet-50 with every BatchNorm replaced by Identity (torchvision's
  own Kaiming-normal fan-out init), 10 classes;
- ``vgg``: a VGG-style stack (3x3 convs 16-32-64-64-128-128, max pooling after the 1st, 2nd, 4th
  and 6th, global average pooling, Linear), no BN, PyTorch's default init.

Inits: ``default`` (the model as constructed), and every onnxinit method or comma list in
``--inits``: the module is exported to ONNX (TorchScript exporter, initializers keep the
module's parameter names), rescaled with :func:`onnxinit.rescale.rescale` (data-driven methods
get the training split as ``--data``, at the training batch size), and the rescaled values are
loaded back with :func:`onnxinit.adapters.torch.load_into`.

Training, as the papers: SGD with momentum 0.9, gradient-norm clipping at ``--clip`` (GradInit
and MetaInit clip every network without BN at 1), constant learning rate, ``--epochs`` epochs
of batch ``--batch-size``. Every init is trained at each rate of ``--lrs`` (AutoInit's Fig. 4a
protocol: compare inits at their own best rate) and each seed. GradInit, MetaInit and NIO also
sweep their scale learning rate (``--scale-lrs``), as their papers tune it; the reported row
uses the scale rate with the best Acc_best.

Results: Acc_0 (test accuracy after the first epoch), Acc_best (best over the epochs), the
training loss of the first 100 steps; mean +- std over the seeds. Every (model, init, scale lr,
seed, lr) result is cached in ``--results`` (JSON) as soon as it finishes, so an interrupted run
resumes where it stopped; ``--report`` prints the tables from the cache and ``--plot`` draws
``<model>_lr_sweep.png`` and ``<model>_loss.png`` beside it (needs matplotlib: the ``bench``
extra).

    python benchmarks/training_benefit.py --models mlp resnet20          # run (resumable)
    python benchmarks/training_benefit.py --models vgg --seeds 1 2 --at-best-of 0  # more seeds
    python benchmarks/training_benefit.py --report --plot                # tables and figures

``--at-best-of 0`` runs only each init's best (scale lr, lr) cell of seed 0's cached grid: the
full grid for one seed, more seeds where it matters. The best cell is ranked over the seeds
every candidate cell has, so extra seeds do not move it. A mean Acc_best below 20% (twice
chance) reads "none trains". The cache key has no epoch count or image size: keep ``--epochs`` and ``--image`` fixed per
model (the table header prints the epochs and image sizes it found; a run at another image size
than the cached ones of that model stops).

Needs the ``bench`` extra: ``pip install -e .[bench]`` (scikit-learn, torch, torchvision,
matplotlib).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "training_benefit.json"
INITS = ("default", "kaiming", "autoinit", "idinit", "idinit,autoinit", "lsuv", "gradinit",
         "metainit", "nio", "kaiming,gradinit", "kaiming,metainit", "kaiming,nio")
GRADIENT_METHODS = ("gradinit", "metainit", "nio")
SCALE_LRS = {"gradinit": (1e-3, 1e-2, 5e-2), "metainit": (0.01, 0.1), "nio": (3e-3, 3e-2)}
LOSS_STEPS = 100
TRAINS = 0.2  # a mean Acc_best below twice chance (10 classes) counts as "none trains"


# --- data and models ------------------------------------------------------------------------


def digits(image: int | None):
    """(x_train, y_train, x_test, y_test): standardised float32, int64 labels; images
    ``3 x image x image`` (nearest upsampling) when ``image`` is given, else 64 features."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data.astype(np.float64), data.target.astype(np.int64), test_size=0.2,
        random_state=0, stratify=data.target)
    mean, std = x_train.mean(), x_train.std()
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    if image is not None:
        factor = image // 8

        def up(x):
            x = x.reshape(-1, 1, 8, 8).repeat(factor, axis=2).repeat(factor, axis=3)
            return np.repeat(x, 3, axis=1)

        x_train, x_test = up(x_train), up(x_test)
    return (x_train.astype(np.float32), y_train, x_test.astype(np.float32), y_test)


def build(name: str, seed: int, args):
    """The torch module (seeded) and whether it takes images."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    if name == "mlp":
        act = {"relu": nn.ReLU, "tanh": nn.Tanh}[args.mlp_activation]
        widths = [64] + [args.mlp_width] * (args.mlp_depth - 1) + [10]
        layers: list[nn.Module] = []
        for i in range(len(widths) - 1):
            layers.append(nn.Linear(widths[i], widths[i + 1]))
            if i < len(widths) - 2:
                layers.append(act())
        return nn.Sequential(*layers), False
    if name in ("resnet20", "resnet32"):
        return cifar_resnet(3 if name == "resnet20" else 5), True
    if name == "resnet50":
        from torchvision.models import resnet50

        return resnet50(weights=None, num_classes=10, norm_layer=lambda c: nn.Identity()), True
    if name == "vgg":
        cfg = [16, "M", 32, "M", 64, 64, "M", 128, 128, "M"]
        layers, cin = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
                cin = v
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10)]
        return nn.Sequential(*layers), True
    raise ValueError(name)


def cifar_resnet(blocks: int):
    import torch.nn.functional as F
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
            self.shortcut = (nn.Conv2d(cin, cout, 1, stride) if stride != 1 or cin != cout
                             else nn.Identity())

        def forward(self, x):
            return F.relu(self.conv2(F.relu(self.conv1(x))) + self.shortcut(x))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, 1, 1)
            stages, cin = [], 16
            for stage, width in enumerate((16, 32, 64)):
                for i in range(blocks):
                    stages.append(Block(cin, width, 2 if stage > 0 and i == 0 else 1))
                    cin = width
            self.blocks = nn.Sequential(*stages)
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            x = self.blocks(F.relu(self.conv1(x)))
            return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))

    return ResNet()


def export(module, path: Path, example) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (example,), str(path), input_names=["x"], output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
            keep_initializers_as_inputs=False, do_constant_folding=False, opset_version=17)


# --- one run --------------------------------------------------------------------------------


def initialise(module, init: str, scale_lr: float | None, seed: int, split, tmp: Path, args):
    """Apply ``init`` to ``module`` in place; (seconds, a summary of the method reports)."""
    if init == "default":
        return 0.0, {}
    from onnxinit.adapters.torch import load_into
    from onnxinit.methods import option_fields
    from onnxinit.rescale import rescale

    x_train, y_train = split[0], split[1]
    path = tmp / "model.onnx"
    export(module, path, __import__("torch").from_numpy(x_train[:2]))
    data = tmp / "train.npz"
    if not data.exists():
        np.savez(data, x=x_train, labels=y_train)
    methods = init.split(",")
    options = {"seed": seed, "data": str(data), "threads": args.threads,
               **args.method_options}
    for name in methods:
        if name in GRADIENT_METHODS and scale_lr is not None:
            options[f"{name}_lr"] = scale_lr
    read = option_fields()  # rescale refuses an option no chosen method reads
    options = {k: v for k, v in options.items()
               if k not in read or set(read[k][1]) & set(methods)}
    start = time.perf_counter()
    result = rescale(path, init, write=False, batch_size=args.batch_size, **options)
    seconds = time.perf_counter() - start
    load_into(module, result.model, str(path), strict=True)
    summary = {}
    for name, report in result.method_reports.items():
        if name in GRADIENT_METHODS:
            summary[name] = {"before": report.get("before"), "after": report.get("after"),
                             "kept_iteration": report.get("kept_iteration"),
                             "iterations": report.get("iterations")}
    return seconds, summary


def train(module, split, *, lr: float, seed: int, args) -> dict:
    """Test accuracy after each epoch and the loss of the first LOSS_STEPS steps."""
    import torch

    x_train, y_train, x_test, y_test = (torch.from_numpy(a) for a in split)
    optimizer = torch.optim.SGD(module.parameters(), lr=lr, momentum=0.9)
    generator = np.random.default_rng(seed)
    losses, accuracy, diverged = [], [], False
    for _ in range(args.epochs):
        module.train()
        order = torch.from_numpy(generator.permutation(len(x_train)))
        for start in range(0, len(order) - args.batch_size + 1, args.batch_size):
            rows = order[start:start + args.batch_size]
            loss = torch.nn.functional.cross_entropy(module(x_train[rows]), y_train[rows])
            if not torch.isfinite(loss):
                diverged = True
                break
            if len(losses) < LOSS_STEPS:
                losses.append(loss.item())
            optimizer.zero_grad()
            loss.backward()
            if args.clip > 0:
                torch.nn.utils.clip_grad_norm_(module.parameters(), args.clip)
            optimizer.step()
        if diverged:
            accuracy += [0.1] * (args.epochs - len(accuracy))  # chance
            break
        module.eval()
        with torch.no_grad():
            accuracy.append(float((module(x_test).argmax(1) == y_test).float().mean()))
    return {"acc": accuracy, "loss": losses, "diverged": diverged}


def key(*parts) -> str:
    return "|".join(str(p) for p in parts)


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def save_results(path: Path, results: dict) -> None:
    """Write ``results`` over the cache, keeping the entries another run added since this one
    read it (two runs of different inits can share one cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    merged = {**load_results(path), **results}
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(merged, indent=0, sort_keys=True))
    tmp.replace(path)


def scale_lrs(init: str, args) -> list:
    """The scale learning rates swept for ``init`` (None: the method's default, or no method)."""
    methods = [n for n in init.split(",") if n in GRADIENT_METHODS]
    if not methods or not args.sweep_scale_lr:
        return [None]
    return list(args.scale_lrs.get(methods[-1], SCALE_LRS[methods[-1]]))


def planned(results: dict, model: str, init: str, args) -> list:
    """[(scale lr, training lrs)] to run for ``init``: the whole grid, or with ``--at-best-of
    SEED`` only the cell (scale lr, lr) with the best Acc_best that seed reached (cached)."""
    if args.at_best_of is None:
        return [(s, list(args.lrs)) for s in scale_lrs(init, args)]
    cells = summarise(results, model, init, args.lrs, [args.at_best_of])
    best = best_cell(cells)
    if best is None:
        return []
    return [(None if best[0] == "None" else float(best[0]), [best[1]])]


def run(args) -> None:
    import copy

    import torch

    torch.set_num_threads(args.threads)
    results = load_results(args.results)
    for model in args.models:
        mixed = {r["image"] for k, r in results.items() if k.startswith(f"{model}|")
                 and isinstance(r, dict) and r.get("image") not in (None, args.image)}
        if model != "mlp" and mixed:
            raise SystemExit(f"{model}: the cache holds runs at --image {sorted(mixed)}; the key "
                             f"has no image size, so keep it fixed per model (or --results)")
        split = digits(None if model == "mlp" else args.image)
        for seed in args.seeds:
            for init in args.inits:
                for scale_lr, lrs in planned(results, model, init, args):
                    base = key(model, init, scale_lr, seed)
                    todo = [lr for lr in lrs if key(base, lr) not in results]
                    if not todo or results.get(key(base, "failed")):
                        continue
                    module, _ = build(model, seed, args)
                    with tempfile.TemporaryDirectory() as tmp:
                        try:
                            seconds, summary = initialise(module, init, scale_lr, seed, split,
                                                          Path(tmp), args)
                        except Exception as exc:  # noqa: BLE001 - reported, not fatal
                            results[key(base, "failed")] = f"{type(exc).__name__}: {exc}"[:300]
                            save_results(args.results, results)
                            print(f"{base}: failed: {exc}", flush=True)
                            continue
                    results[key(base, "rescale")] = {"seconds": seconds, "reports": summary}
                    for lr in todo:
                        trained = copy.deepcopy(module)
                        start = time.perf_counter()
                        outcome = train(trained, split, lr=lr, seed=seed, args=args)
                        outcome["seconds"] = time.perf_counter() - start
                        outcome["image"] = None if model == "mlp" else args.image
                        results[key(base, lr)] = outcome
                        save_results(args.results, results)
                        print(f"{key(base, lr)}: acc {' '.join(f'{a:.2f}' for a in outcome['acc'])}"
                              f"{' diverged' if outcome['diverged'] else ''}", flush=True)


# --- tables and figures ---------------------------------------------------------------------


def summarise(results: dict, model: str, init: str, lrs, seeds):
    """Per (scale lr, lr): Acc_0 and Acc_best over the seeds that finished, and loss curves."""
    cells = {}
    for scale_lr in sorted({k.split("|")[2] for k in results
                            if k.startswith(f"{model}|{init}|")}):
        for lr in lrs:
            found = [(s, results.get(key(model, init, scale_lr, s, lr))) for s in seeds]
            found = [(s, r) for s, r in found if r]
            runs = [r for _, r in found]
            if runs:
                cells[scale_lr, lr] = {
                    "acc0": [r["acc"][0] for r in runs], "best": [max(r["acc"]) for r in runs],
                    "loss": [r["loss"] for r in runs], "seeds": len(runs),
                    "seed_ids": [s for s, _ in found], "epochs": len(runs[0]["acc"]),
                    "image": runs[0].get("image")}
    return cells


def best_cell(cells, lr=None):
    """The (scale lr, lr) with the highest mean Acc_best (at ``lr`` if given), ranked over the
    seeds every candidate cell has (seed 0 alone when only the best cells got more seeds), so a
    cell run with more seeds is not favoured or penalised for them."""
    options = [k for k in cells if lr is None or k[1] == lr]
    if not options:
        return None
    common = set.intersection(*(set(cells[k]["seed_ids"]) for k in options))

    def score(k):
        c = cells[k]
        return np.mean([b for s, b in zip(c["seed_ids"], c["best"]) if s in common] or [-1])
    return max(options, key=score)


def fmt(values) -> str:
    """Mean +- std in %; a single seed is shown without a spread it does not have."""
    values = 100 * np.asarray(values)
    if len(values) == 1:
        return f"{values[0]:.1f} (1 seed)"
    return f"{values.mean():.1f} +- {values.std():.1f}"


def report(results: dict, args) -> str:
    lines = []
    for model in args.models:
        rows, epochs, images = [], set(), set()
        base_best = None
        for init in args.inits:
            cells = summarise(results, model, init, args.lrs, args.seeds)
            failed = [results[k] for k in results
                      if k.startswith(f"{model}|{init}|") and k.endswith("|failed")]
            if not cells:
                if failed:
                    rows.append(f"| {init} | failed: {failed[0][:60]} | | | | | |")
                continue
            best = best_cell(cells)
            at_default = best_cell(cells, args.default_lr)
            c, d = cells[best], cells.get(at_default)
            trains = np.mean(c["best"]) >= TRAINS
            if init == "default" and trains:
                base_best = best[1]
            ratio = "" if base_best is None else f" ({best[1] / base_best:.3g}x)"
            rate = f"{best[1]:g}{ratio}" if trains else "none trains"
            scale = "" if best[0] == "None" else f" (scale lr {best[0]})"
            epochs.add(c["epochs"])
            images.add(c["image"])
            rows.append(
                f"| {init}{scale} | {rate} | {fmt(c['acc0'])} | {fmt(c['best'])} "
                f"| {fmt(d['acc0']) if d else ''} | {fmt(d['best']) if d else ''} | "
                f"{c['seeds']} |")
        if rows:
            shown = sorted(str(i) for i in images if i is not None)
            size = f", {'/'.join(shown)} px images" if shown else ""
            lines += [f"\n{model}{size}: best lr over {args.lrs} (ratio to the default init's best), "
                      f"Acc_0 (epoch 1) / Acc_best (of {'/'.join(map(str, sorted(epochs)))} "
                      f"epochs, %) at it and at lr {args.default_lr}; mean +- std over seeds", "",
                      "| init | best lr | Acc_0 at best | Acc_best at best | Acc_0 at default lr "
                      "| Acc_best at default lr | seeds |", "|---|---|---|---|---|---|---|", *rows]
    return "\n".join(lines)


def plot(results: dict, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for model in args.models:
        fig_lr, ax_lr = plt.subplots(figsize=(7, 4.5))
        fig_loss, ax_loss = plt.subplots(figsize=(7, 4.5))
        drawn = False
        for init in args.inits:
            cells = summarise(results, model, init, args.lrs, args.seeds)
            if not cells:
                continue
            drawn = True
            scale = best_cell(cells)[0]
            lrs = [lr for lr in args.lrs if (scale, lr) in cells]
            means = [100 * np.mean(cells[scale, lr]["best"]) for lr in lrs]
            ax_lr.plot(lrs, means, marker="o", label=init)
            curves = [c for c in cells[best_cell(cells)]["loss"] if c]
            length = min(len(c) for c in curves) if curves else 0
            if length:
                ax_loss.plot(np.mean([c[:length] for c in curves], axis=0), label=init)
        if not drawn:
            continue
        ax_lr.set(xscale="log", xlabel="training learning rate", ylabel="Acc_best (%)",
                  title=f"{model}: accuracy at each learning rate (mean over seeds)")
        ax_loss.set(xlabel="step", ylabel="training loss", yscale="log",
                    title=f"{model}: first {LOSS_STEPS} steps at each init's best lr")
        for fig, ax, name in ((fig_lr, ax_lr, "lr_sweep"), (fig_loss, ax_loss, "loss")):
            ax.legend(fontsize=7, ncol=2)
            fig.tight_layout()
            fig.savefig(args.results.parent / f"{model}_{name}.png", dpi=110)
        plt.close("all")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "resnet20"],
                        choices=["mlp", "resnet20", "resnet32", "resnet50", "vgg"])
    parser.add_argument("--inits", nargs="+", default=list(INITS))
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.3, 0.1, 0.03, 0.01, 0.003])
    parser.add_argument("--default-lr", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image", type=int, default=32, choices=[8, 16, 24, 32])
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--mlp-depth", type=int, default=24)
    parser.add_argument("--mlp-width", type=int, default=64)
    parser.add_argument("--mlp-activation", choices=("relu", "tanh"), default="relu")
    parser.add_argument("--sweep-scale-lr", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--scale-lrs", action="append", default=[], metavar="METHOD=LR[,LR]",
                        help="the scale rates swept for METHOD instead of its default list, "
                             "e.g. gradinit=0.01 (a CPU budget: the paper's default first)")
    parser.add_argument("--at-best-of", type=int, default=None, metavar="SEED",
                        help="run only each init's best (scale lr, lr) cell of SEED's cached "
                             "results (e.g. seeds 1 2 at the best rates of seed 0)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--method-option", action="append", default=[], metavar="NAME=VALUE",
                        help="a rescale option for every method run, e.g. metainit_steps=100")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--report", action="store_true", help="print tables from the cache")
    parser.add_argument("--plot", action="store_true", help="draw PNGs from the cache")
    args = parser.parse_args(argv)
    args.scale_lrs = {name: [float(v) for v in values.split(",")] for name, values in
                      (item.split("=", 1) for item in args.scale_lrs)}
    args.method_options = {k: json.loads(v) for k, v in
                           (item.split("=", 1) for item in args.method_option)}
    if args.report or args.plot:
        results = load_results(args.results)
        if args.report:
            print(report(results, args))
        if args.plot:
            plot(results, args)
        return
    run(args)


if __name__ == "__main__":
    main()
