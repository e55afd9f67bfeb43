"""Calibrating ``onnxinit check`` against training: does the gate fail exactly the networks that
do not train?

For every network of ``gate_models.NETWORKS`` (healthy standard networks, deep networks without
normalization, deep MLPs with default init, transformers with and without LayerNorm):

1. train it with the fixed short protocol of ``gate_training`` (digits, SGD, a learning-rate
   sweep) and label it *trainable* or not;
2. export it in training mode and run ``check`` with its default options, keeping the verdict,
   the findings and the statistics the thresholds act on (the largest variance growth and the
   smallest signal variance on the main path, relative to the input);
3. print the table (network, verdict, trained or not, best accuracy and learning rate), the
   confusion matrix (failed/passed x untrainable/trainable), and for each threshold the range
   of values that separates the two groups, from which the defaults are chosen.

Results are cached as JSON in ``benchmarks/results/``: ``gate_training.json`` (per network; a
network is retrained only when missing or when the protocol changed) and ``gate_check.json``
(per network, keyed by a hash of the onnxinit sources, so ``check`` reruns after a code change).

    python benchmarks/gate_calibration.py                   # everything not cached yet
    python benchmarks/gate_calibration.py --models mlp50_tanh_default,resnet18
    python benchmarks/gate_calibration.py --no-train        # check only; table of what is cached
    python benchmarks/gate_calibration.py --table           # print the cached table only

Needs torch, torchvision, transformers and scikit-learn (the ``bench`` extra and transformers).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gate_models  # noqa: E402
import gate_training  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TRAINING_FILE = RESULTS / "gate_training.json"
CHECK_FILE = RESULTS / "gate_check.json"
SOURCES = Path(__file__).resolve().parents[1] / "onnxinit"


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _save(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def sources_hash() -> str:
    digest = hashlib.sha256()
    for file in sorted(SOURCES.rglob("*.py")):
        digest.update(file.relative_to(SOURCES).as_posix().encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def train_missing(names: list[str]) -> dict:
    cache = _load(TRAINING_FILE)
    data = gate_models.digits(gate_training.SEED)
    for name in names:
        cached = cache.get(name)
        if cached is not None and cached.get("protocol") == gate_training.PROTOCOL:
            continue
        start = time.perf_counter()
        try:
            cache[name] = gate_training.train(name, data)
        except Exception as exc:  # noqa: BLE001 - record it, go on with the others
            print(f"{name}: training failed: {type(exc).__name__}: {exc}", flush=True)
            continue
        result = cache[name]
        print(f"{name}: {'trainable' if result['trainable'] else 'NOT trainable'} "
              f"(best {result['best_accuracy']:.2f} at lr {result['best_lr']}, "
              f"{time.perf_counter() - start:.0f} s)", flush=True)
        _save(TRAINING_FILE, cache)
    return cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(gate_models.NETWORKS))
    parser.add_argument("--no-train", action="store_true")
    args = parser.parse_args()
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in gate_models.NETWORKS]
    if unknown:
        parser.error(f"unknown networks: {', '.join(unknown)}")
    if not args.no_train:
        train_missing(names)


if __name__ == "__main__":
    main()
