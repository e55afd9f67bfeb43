"""Why does MetaInit make the normalization-free ResNet-20 of ``training_benefit.py`` train worse
than its default init? Runs MetaInit once (the benchmark's setting: digits at ``--image`` px,
batch 32, seed ``--seed``, ``--metainit-lr``), then compares the two networks on one batch of
256 training digits and by training ablations:

- per tensor: the kept scale; per residual block: the standard deviation of the branch output
  (conv2) and of the shortcut, and their ratio; the logits' std, the loss, the gradient norm and
  per stage the update ratio ``|dL/dW| / |W|`` (SGD's relative step per unit rate);
- ablations: MetaInit's scales applied to one group of tensors only (stem, each stage, the
  classifier), the rest at the default init, each trained as the benchmark does (``--epochs`` at
  lr ``--lr``) over the batch orders ``--train-seeds`` (the network is always seed ``--seed``'s),
  Acc_0 and Acc_best in %, mean +- std.

The MetaInit run is cached in ``--out`` (JSON; delete it to rerun).

    python benchmarks/metainit_diagnosis.py                     # seed 0, lr 0.01, 8 px
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import training_benefit as tb  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

OUT = ROOT / "benchmarks" / "results" / "metainit_resnet20.json"


def group_of(name: str) -> str:
    """stem, stage1..3 (blocks 0-2, 3-5, 6-8 of ResNet-20), or fc."""
    if name.startswith("conv1."):
        return "stem"
    if name.startswith("fc."):
        return "fc"
    block = int(name.split(".")[1])
    return f"stage{block // 3 + 1}"


def metainit_scales(args, split) -> dict:
    """{'scales', 'report'} of one MetaInit run (cached in ``args.out``)."""
    if args.out.exists():
        return json.loads(args.out.read_text())
    import torch

    from onnxinit.rescale import rescale

    bench = SimpleNamespace(image=args.image)
    module, _ = tb.build("resnet20", args.seed, bench)
    with tempfile.TemporaryDirectory() as tmp:
        path, data = Path(tmp) / "model.onnx", Path(tmp) / "train.npz"
        tb.export(module, path, torch.from_numpy(split[0][:2]))
        np.savez(data, x=split[0], labels=split[1])
        result = rescale(path, "metainit", write=False, batch_size=32, seed=args.seed,
                         data=str(data), threads=1, metainit_lr=args.metainit_lr)
    report = result.method_reports["metainit"]
    out = {"seed": args.seed, "image": args.image, "metainit_lr": args.metainit_lr,
           "scales": report["scales"],
           "report": {k: report.get(k) for k in ("before", "after", "kept_iteration",
                                                  "at_lower_bound", "seconds")}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, sort_keys=True))
    return out


def scaled(module, scales: dict, groups=None):
    """A copy of ``module`` with each tensor of ``scales`` (in ``groups``, or all) multiplied."""
    import torch

    out = copy.deepcopy(module)
    with torch.no_grad():
        for name, p in out.named_parameters():
            if name in scales and (groups is None or group_of(name) in groups):
                p.mul_(scales[name])
    return out


def statistics(module, x, y) -> dict:
    """Branch and shortcut stds per block, logit std, loss, gradient norm and update ratios."""
    import torch

    seen = {}
    hooks = []
    for i, block in enumerate(module.blocks):
        for part, sub in (("branch", block.conv2), ("shortcut", block.shortcut)):
            hooks.append(sub.register_forward_hook(
                lambda _m, inp, out, key=(i, part): seen.__setitem__(key, out.detach())))
    module.zero_grad()
    logits = module(x)
    loss = torch.nn.functional.cross_entropy(logits, y)
    loss.backward()
    for h in hooks:
        h.remove()
    blocks = [{"block": i, "branch_std": float(seen[i, "branch"].std()),
               "shortcut_std": float(seen[i, "shortcut"].std()),
               "ratio": float(seen[i, "branch"].std() / seen[i, "shortcut"].std())}
              for i in range(len(module.blocks))]
    grads = {n: p.grad for n, p in module.named_parameters()}
    params = dict(module.named_parameters())
    ratios = {}
    for group in ("stem", "stage1", "stage2", "stage3", "fc"):
        names = [n for n in params if group_of(n) == group and params[n].dim() >= 2]
        g = torch.sqrt(sum((grads[n] ** 2).sum() for n in names))
        w = torch.sqrt(sum((params[n] ** 2).sum() for n in names))
        ratios[group] = float((g / w).detach())
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads.values()))
    return {"loss": float(loss), "logit_std": float(logits.std()), "grad_norm": float(norm),
            "update_ratio": ratios, "blocks": blocks}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image", type=int, default=8)
    parser.add_argument("--metainit-lr", type=float, default=0.01)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-seeds", type=int, nargs="+", default=None,
                        help="batch orders of the ablation trainings (default: --seed)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    split = tb.digits(args.image)
    run = metainit_scales(args, split)
    scales = run["scales"]
    bench = SimpleNamespace(image=args.image, epochs=args.epochs, batch_size=32, clip=1.0)
    default, _ = tb.build("resnet20", args.seed, bench)
    x, y = torch.from_numpy(split[0][:256]), torch.from_numpy(split[1][:256])
    print(f"MetaInit (seed {args.seed}, lr {args.metainit_lr}): held-out "
          f"{run['report']['before']} -> {run['report']['after']}, kept iteration "
          f"{run['report']['kept_iteration']}, at the bound: {run['report']['at_lower_bound']}")
    print("\n| tensor | scale |\n|---|---|")
    for name, s in scales.items():
        print(f"| {name} | {s:.3f} |")
    stats = {"default": statistics(default, x, y),
             "metainit": statistics(scaled(default, scales), x, y)}
    print("\n| network | loss | logit std | grad norm | update ratio stem / s1 / s2 / s3 / fc |")
    print("|---|---|---|---|---|")
    for k, s in stats.items():
        r = s["update_ratio"]
        print(f"| {k} | {s['loss']:.3f} | {s['logit_std']:.3f} | {s['grad_norm']:.3f} | "
              + " / ".join(f"{r[g]:.3f}" for g in ("stem", "stage1", "stage2", "stage3", "fc"))
              + " |")
    print("\n| block | branch/shortcut std, default | metainit |\n|---|---|---|")
    for a, b in zip(stats["default"]["blocks"], stats["metainit"]["blocks"]):
        print(f"| {a['block']} | {a['ratio']:.3f} | {b['ratio']:.3f} |")
    rows = [("default", None, {}), ("metainit (all)", None, scales)]
    rows += [(f"metainit on {g} only", {g}, scales)
             for g in ("stem", "stage1", "stage2", "stage3", "fc")]
    rows += [("metainit on all but fc", {"stem", "stage1", "stage2", "stage3"}, scales)]
    orders = args.train_seeds or [args.seed]
    print(f"\nTrained {args.epochs} epochs at lr {args.lr}, batch orders {orders} (Acc_0 / "
          "Acc_best, %)\n\n| network | Acc_0 | Acc_best |\n|---|---|---|")
    trained = {}
    for label, groups, s in rows:
        runs = [tb.train(scaled(default, s, groups), split, lr=args.lr, seed=order,
                         args=bench)["acc"] for order in orders]
        trained[label] = runs
        first, best = [r[0] for r in runs], [max(r) for r in runs]
        print(f"| {label} | {tb.fmt(first)} | {tb.fmt(best)} |", flush=True)
    run.update({"statistics": stats, "ablations": trained, "train_lr": args.lr,
                "epochs": args.epochs, "batch_orders": orders})
    args.out.write_text(json.dumps(run, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
