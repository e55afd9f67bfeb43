"""Is ``onnxinit check``'s verdict stable? Each network of ``gate_models.NETWORKS`` checked as
``gate_calibration.py`` checks it (seed 0, export batch 8, 32x32 images), then once per
variant with one thing changed: the weights' seed (1, 2), the export's batch size (1, 32), and
for image networks the input size (64x64; at batch 1 too). A verdict that flips with the seed
or the batch says the gate is judging noise; the table gives each variant's verdict and the
range of what the thresholds act on (max growth, min signal) over the variants.

    python benchmarks/gate_robustness.py                          # every network and variant
    python benchmarks/gate_robustness.py --models resnet18,mlp24_relu_default --variants batch1
    python benchmarks/gate_robustness.py --table                  # the cached table only
    python benchmarks/gate_robustness.py --models transformer48_noln --seeds 0,1,2 --lrs 1e-3,3e-4

``--seeds``: the label's own stability instead, each network of ``--models`` trained with
``gate_training``'s protocol at each seed (weights and batch order) and learning rate of
``--lrs``, cached in ``gate_robustness_training.json``.

Results are cached in ``benchmarks/results/gate_robustness.json`` per network, variant and
onnxinit source hash (the baseline's in ``gate_check.json``, shared with the calibration).
An export that PyTorch refuses (BatchNorm in training mode over one value per channel: batch
1 on a map reduced to 1x1; VGG's 7x7 copy on a 2x2 map) is recorded as such, not as a verdict.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gate_calibration  # noqa: E402
import gate_models  # noqa: E402

ROBUSTNESS_FILE = gate_calibration.RESULTS / "gate_robustness.json"
TRAINING_FILE = gate_calibration.RESULTS / "gate_robustness_training.json"
# variant -> (seed, batch, image size)
VARIANTS = {"seed1": (1, 8, 32), "seed2": (2, 8, 32), "batch1": (0, 1, 32),
            "batch32": (0, 32, 32), "size64": (0, 8, 64), "size64_batch1": (0, 1, 64)}
IMAGE_ONLY = {"size64", "size64_batch1"}


def applies(name: str, variant: str) -> bool:
    return variant not in IMAGE_ONLY or _kind(name) == "image"


def _kind(name: str) -> str:
    return "tokens" if name in ("bert_4x128", "gpt2_4x128") else (
        "rows" if name.startswith(("transformer", "lstm", "gru")) else "flat" if name.startswith("mlp")
        else "image")


def check_variant(key: str) -> dict:
    """``check`` (``gate_calibration.check_export``) on network ``name`` exported with the
    variant's seed, batch and input size; ``key`` is ``name|variant``."""
    import torch

    name, variant = key.split("|")
    seed, batch, size = VARIANTS[variant]
    module, kind = gate_models.NETWORKS[name](seed)
    start = time.perf_counter()
    if kind == "image":
        example = torch.randn((batch, 3, size, size),
                              generator=torch.Generator().manual_seed(seed))
    else:
        example = gate_models.example_input(kind, batch, seed)
    input_name = "input_ids" if kind == "tokens" else "x"
    try:
        model = gate_models.export_training(module, example, input_name)
    except Exception as exc:  # noqa: BLE001 - PyTorch refuses some shapes: say so
        return {"export_error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}",
                "passed": None, "rules": [], "export_seconds": 0.0, "check_seconds": 0.0}
    export_seconds = round(time.perf_counter() - start, 1)
    return {**gate_calibration.check_export(model), "export_seconds": export_seconds}


def _cell(r: dict | None) -> str:
    if r is None:
        return ""
    if r.get("export_error"):
        return "no export"
    fired = sorted({x.split(":")[0] for x in r["rules"] if not x.endswith(":note")})
    return "pass" if r["passed"] else "**FAIL** " + ",".join(f[-3:] for f in fired)


def table(names: list[str], variants: list[str], base: dict, cache: dict) -> str:
    version = gate_calibration.sources_hash()
    training = gate_calibration._load(gate_calibration.TRAINING_FILE)
    head = ["network", "label", "baseline", *variants, "flips", "max growth (range)",
            "min signal (range)"]
    rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    flips_total, stale = 0, False
    for name in names:
        results = {"baseline": base.get(name)}
        results.update({v: cache.get(f"{name}|{v}") for v in variants if applies(name, v)})
        done = {k: r for k, r in results.items() if r is not None and not r.get("export_error")}
        if not done:
            continue
        stale |= any(r.get("sources") != version for r in done.values())
        verdicts = {r["passed"] for r in done.values()}
        flips = len(verdicts) > 1
        flips_total += flips
        growth = [r["max_growth"] for r in done.values()]
        signal = [r["min_signal"] for r in done.values()]
        trainable, trained = gate_calibration.label(name, training)
        label = ("trains" if trainable else "does not train") + ("" if trained else " (expected)")
        rows.append(f"| {name} | {label} | {_cell(results['baseline'])} | "
                    + " | ".join(_cell(results.get(v)) if applies(name, v) else "n/a"
                                 for v in variants)
                    + f" | {'**yes**' if flips else 'no'} | "
                    f"{min(growth):.3g} - {max(growth):.3g} | "
                    f"{min(signal):.3g} - {max(signal):.3g} |")
    rows += ["", f"networks whose verdict changes with a variant: {flips_total}"]
    if stale:
        rows.append("(some results are from an earlier version of onnxinit's sources)")
    return "\n".join(rows)


def train_seeds(name: str, seeds: list[int], lrs: list[float]) -> str:
    """``gate_training.train_once`` per seed and learning rate (cached); a markdown table."""
    import gate_training

    cache = gate_calibration._load(TRAINING_FILE)
    data = gate_models.digits(gate_training.SEED)
    rows = ["| seed | lr | best accuracy | steps | diverged | trains? |",
            "| --- | --- | --- | --- | --- | --- |"]
    for seed in seeds:
        for lr in lrs:
            key = f"{name}|{seed}|{lr:g}"
            if cache.get(key, {}).get("protocol") != gate_training.protocol(name):
                gate_calibration.torch_threads()
                run = gate_training.train_once(name, lr, data, seed)
                cache[key] = {**run, "protocol": gate_training.protocol(name)}
                gate_calibration._save(TRAINING_FILE, cache)
                print(f"{key}: best {run['best_accuracy']:.2f} in {run['steps']} steps "
                      f"({run['seconds']:.0f} s)", flush=True)
            r = cache[key]
            ok = r["best_accuracy"] >= gate_training.TRAINABLE_ACCURACY
            rows.append(f"| {seed} | {lr:g} | {r['best_accuracy']:.2f} | {r['steps']} | "
                        f"{'yes' if r['diverged'] else 'no'} | {'yes' if ok else '**no**'} |")
    return "\n".join(rows)


def main() -> None:
    names = list(gate_models.NETWORKS)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(names))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--table", action="store_true", help="print the cached table only")
    parser.add_argument("--seeds", help="train the networks per seed (comma-separated) instead")
    parser.add_argument("--lrs", default="1e-3,3e-4", help="learning rates for --seeds")
    args = parser.parse_args()
    if args.seeds:
        for name in args.models.split(","):
            print(train_seeds(name, [int(x) for x in args.seeds.split(",")],
                              [float(x) for x in args.lrs.split(",")]))
        return
    chosen = [n for n in args.models.split(",") if n]
    variants = [v for v in args.variants.split(",") if v]
    bad = [n for n in chosen if n not in names] + [v for v in variants if v not in VARIANTS]
    if bad:
        parser.error(f"unknown networks or variants: {', '.join(bad)}")
    gate_calibration.torch_threads()
    base = gate_calibration.check_missing([] if args.table else chosen)
    keys = [f"{n}|{v}" for v in variants for n in chosen if applies(n, v)]
    cache = gate_calibration.check_missing([] if args.table else keys, check_variant,
                                           ROBUSTNESS_FILE)
    print(table(chosen, variants, base, cache))


if __name__ == "__main__":
    main()
