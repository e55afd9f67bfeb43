"""Does a rescaled initialization train better? Plain SGD on a real (small) dataset.

Dataset: scikit-learn's ``load_digits`` (1797 8x8 grey digits, 10 classes, shipped inside the
package: nothing is downloaded), features standardised with the training split's statistics,
a stratified 80/20 split fixed by seed 0.

Network: a deep normalization-free MLP in torch, ``depth`` Linear layers of ``width`` units with
ReLU (or tanh) between them and PyTorch's default init (weights U(+-1/sqrt(fan_in)), variance
1/(3 fan_in)), so the signal shrinks by about 1/6 per ReLU layer: the default init barely trains.

For each seed: build the module (``torch.manual_seed(seed)``), export it to ONNX
(``dynamo=False``, ``keep_initializers_as_inputs=False``, no constant folding: initializers keep
the module's parameter names), rescale it with ``onnxinit.rescale.rescale`` for every registered
method among autoinit, lsuv, gradinit, metainit, nio (data-driven ones get the training split as
``--data``), load the rescaled values back into the same module by name
(``onnxinit.adapters.torch.load_into`` when it exists) and train with plain SGD (no momentum, no
weight decay) for ``epochs`` epochs. Acc_0 is the test accuracy after the first epoch, Acc_best the
best test accuracy over all epochs (the papers' columns); mean +- std over the seeds.

GradInit, MetaInit and NIO start in their papers from a Kaiming (or Xavier) init, not from one
whose signal has already vanished; ``--from-kaiming`` (on by default) adds the rows ``kaiming``
and ``kaiming,<method>`` (onnxinit's comma list: kaiming first, then the method). A method that
fails on a seed is reported with its message and the seeds it failed on.

    python benchmarks/training_benefit.py            # 3 seeds, 20 epochs, lr 0.01
    python benchmarks/training_benefit.py --quick    # 1 seed, 4 epochs, fewer method iterations

Needs the ``bench`` extra: ``pip install -e .[bench]`` (scikit-learn and torch).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CANDIDATES = ("autoinit", "lsuv", "gradinit", "metainit", "nio")
DATA_DRIVEN = ("gradinit", "metainit", "nio")
# in --quick runs, iteration-count options (when a method declares one) are capped at this
QUICK_ITERATIONS = 20


def digits_split(seed: int = 0):
    """(x_train, y_train, x_test, y_test): standardised float32 features, int64 labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data.astype(np.float64), data.target.astype(np.int64), test_size=0.2,
        random_state=seed, stratify=data.target)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    return ((x_train - mean) / std).astype(np.float32), y_train, \
        ((x_test - mean) / std).astype(np.float32), y_test


def build_mlp(depth: int, width: int, activation: str, seed: int, n_in: int = 64,
              n_out: int = 10):
    """``depth`` Linear layers (n_in -> width -> ... -> n_out) with ``activation`` between."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    act = {"relu": nn.ReLU, "tanh": nn.Tanh}[activation]
    widths = [n_in] + [width] * (depth - 1) + [n_out]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b))
        if i < depth - 1:
            layers.append(act())
    return nn.Sequential(*layers)


def export(module, path: Path, n_in: int = 64) -> None:
    import warnings

    import torch

    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module, (torch.zeros(2, n_in),), str(path), input_names=["x"],
            output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False, keep_initializers_as_inputs=False, do_constant_folding=False,
            opset_version=17)


def load_back(module, rescaled, original: Path) -> None:
    """Load the rescaled initializers into ``module`` (every tensor must map to a parameter)."""
    from onnxinit.adapters.torch import load_into

    load_into(module, rescaled, str(original), strict=True)


def method_options(name: str, quick: bool, data: str | None) -> dict:
    """Keyword options for method ``name``: ``data`` for data-driven methods; in quick runs every
    declared ``*_iterations``/``*_steps`` option capped at QUICK_ITERATIONS."""
    from onnxinit.methods import METHODS

    fields = {f.name: f for f in dataclasses.fields(METHODS[name][1])}
    options = {}
    if "data" in fields and data is not None:
        options["data"] = data
    if quick:
        for field_name, f in fields.items():
            if field_name.startswith(name) and field_name.endswith(("_iterations", "_steps")) \
                    and isinstance(f.default, int) and f.default > QUICK_ITERATIONS:
                options[field_name] = QUICK_ITERATIONS
    return options


def accuracy(module, x, y) -> float:
    import torch

    with torch.no_grad():
        return float((module(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def train(module, split, *, epochs: int, lr: float, batch_size: int, seed: int) -> list[float]:
    """Test accuracy after each epoch of plain SGD on the cross-entropy loss."""
    import torch

    x_train, y_train, x_test, y_test = split
    optimizer = torch.optim.SGD(module.parameters(), lr=lr, momentum=0.0)
    loss_fn = torch.nn.CrossEntropyLoss()
    rng = np.random.default_rng(seed)
    xs, ys = torch.from_numpy(x_train), torch.from_numpy(y_train)
    history = []
    for _ in range(epochs):
        order = torch.from_numpy(rng.permutation(len(x_train)))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            rows = order[start:start + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(module(xs[rows]), ys[rows])
            if not torch.isfinite(loss):
                break
            loss.backward()
            optimizer.step()
        history.append(accuracy(module, x_test, y_test))
    return history


@dataclasses.dataclass
class Row:
    """Results of one init over the seeds: (Acc_0, Acc_best, rescale seconds) per run, and the
    seeds whose rescale failed (with the first failure's message)."""

    runs: list[tuple[float, float, float]] = dataclasses.field(default_factory=list)
    failed: list[int] = dataclasses.field(default_factory=list)
    message: str = ""


def inits(args) -> dict[str, Row | str]:
    """The rows: default, each candidate (or "not available"), and with ``--from-kaiming`` the
    papers' setting for the data-driven methods: kaiming, then kaiming followed by each."""
    from onnxinit.methods import METHODS

    rows: dict[str, Row | str] = {"default": Row()}
    for name in CANDIDATES:
        rows[name] = Row() if name in METHODS else "not available"
    if args.from_kaiming and "kaiming" in METHODS:
        rows["kaiming"] = Row()
        for name in DATA_DRIVEN:
            rows[f"kaiming,{name}"] = Row() if name in METHODS else "not available"
    return rows


def run(args) -> dict[str, Row | str]:
    import torch

    from onnxinit.rescale import rescale

    torch.set_num_threads(args.threads)
    split = digits_split()
    results = inits(args)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "digits_train.npz"
        np.savez(data, x=split[0], labels=split[1])
        for seed in args.seeds:
            for name, row in results.items():
                if isinstance(row, str):
                    continue
                module = build_mlp(args.depth, args.width, args.activation, seed)
                seconds = 0.0
                if name != "default":
                    onnx_path = Path(tmp) / f"mlp_{seed}.onnx"
                    export(module, onnx_path)
                    options = {}
                    for step in name.split(","):
                        options.update(method_options(step, args.quick, str(data)))
                    start = time.perf_counter()
                    try:
                        result = rescale(onnx_path, name, write=False, seed=seed,
                                         batch_size=args.batch_size, **options)
                    except Exception as exc:  # noqa: BLE001  (a failing method is reported, not fatal)
                        row.failed.append(seed)
                        row.message = row.message or f"{type(exc).__name__}: {exc}"[:80]
                        print(f"  seed {seed} {name}: rescale failed: {exc}", file=sys.stderr,
                              flush=True)
                        continue
                    seconds = time.perf_counter() - start
                    load_back(module, result.model, onnx_path)
                history = train(module, split, epochs=args.epochs, lr=args.lr,
                                batch_size=args.batch_size, seed=seed)
                row.runs.append((history[0], max(history), seconds))
                print(f"  seed {seed} {name:9s} acc per epoch "
                      + " ".join(f"{a:.2f}" for a in history), file=sys.stderr, flush=True)
    return results


def table(results: dict[str, Row | str]) -> str:
    def cell(values):
        values = 100 * np.asarray(values)
        return f"{values.mean():5.1f} +- {values.std():4.1f}"

    lines = ["| init | Acc_0 (%) | Acc_best (%) | rescale s | runs |", "|---|---|---|---|---|"]
    for name, row in results.items():
        if isinstance(row, str):
            lines.append(f"| {name} | {row} | | | |")
            continue
        note = f"{len(row.runs)}"
        if row.failed:
            note += f"; failed for seeds {row.failed}: {row.message}"
        if not row.runs:
            lines.append(f"| {name} | | | | {note} |")
            continue
        acc0, best, seconds = zip(*row.runs)
        lines.append(f"| {name} | {cell(acc0)} | {cell(best)} | {np.mean(seconds):.2f} | "
                     f"{note} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="1 seed, 4 epochs, method iteration counts capped at "
                             f"{QUICK_ITERATIONS}")
    parser.add_argument("--depth", type=int, default=24)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--activation", choices=("relu", "tanh"), default="relu")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--from-kaiming", action=argparse.BooleanOptionalAction, default=True,
                        help="also run kaiming and kaiming followed by each of gradinit, "
                             "metainit, nio (the papers start from Kaiming init)")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.seeds = min(args.epochs, 4), args.seeds[:1]
    print(f"load_digits, {args.depth}-layer {args.activation} MLP (width {args.width}), plain "
          f"SGD lr {args.lr}, batch {args.batch_size}, {args.epochs} epochs, seeds "
          f"{args.seeds}", flush=True)
    print(table(run(args)))


if __name__ == "__main__":
    main()
