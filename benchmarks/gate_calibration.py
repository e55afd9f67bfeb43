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
    python benchmarks/gate_calibration.py --no-check        # train only
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

from onnxinit import check  # noqa: E402
from onnxinit.analysis import DEFAULT_MAX_GROWTH, DEFAULT_MIN_VAR, analyze  # noqa: E402
from onnxinit.findings import gradient, variance  # noqa: E402

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
        if cached is not None and cached.get("protocol") == gate_training.protocol(name):
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


def check_network(name: str) -> dict:
    """``check`` with its defaults on the training-mode export of ``name`` (seed as trained)."""
    module, kind = gate_models.NETWORKS[name](gate_training.SEED)
    start = time.perf_counter()
    model = gate_models.export_onnx(module, kind)
    return {**check_export(model), "export_seconds": round(time.perf_counter() - start, 1)}


def check_export(model) -> dict:
    """The verdict, the findings and what the thresholds act on, for one exported model."""
    start = time.perf_counter()
    analysis = analyze(model, backward=True)  # as `check` runs it by default
    paths = check.paths_of(analysis)
    findings = check.find(analysis, paths=paths)
    layers = gradient.layer_gradients(analysis, paths)
    return {"passed": not check.failed(findings),
            "rules": [f"{f.rule_id}:{f.level}" for f in findings],
            "messages": [f.message for f in findings],
            **variance.extremes(analysis, paths),
            "gradient_ratio": gradient.depth_ratio(layers) if layers else None,
            "check_seconds": round(time.perf_counter() - start, 1)}


def check_missing(names: list[str], run=None, path: Path = CHECK_FILE) -> dict:
    """``run(name)`` (default :func:`check_network`) for each network whose cached verdict in
    ``path`` is missing or from other onnxinit sources; the cache, updated after each one."""
    run = run or check_network
    cache = _load(path)
    version = sources_hash()
    for name in names:
        if cache.get(name, {}).get("sources") == version:
            continue
        try:
            cache[name] = {**run(name), "sources": version}
        except Exception as exc:  # noqa: BLE001 - record it, go on with the others
            print(f"{name}: check failed to run: {type(exc).__name__}: {exc}", flush=True)
            continue
        _save(path, cache)
        r = cache[name]
        if r.get("export_error"):
            print(f"{name}: not exported: {r['export_error']}", flush=True)
            continue
        print(f"{name}: {'passed' if r['passed'] else 'FAILED'} {' '.join(r['rules'])} "
              f"({r['export_seconds'] + r['check_seconds']:.0f} s)", flush=True)
    return cache


def _g(x: float) -> str:
    return f"{x:.3g}"


def label(name: str, training: dict) -> tuple[bool, bool]:
    """(trainable, from training here): the training result when cached, else the expectation
    (:func:`gate_models.expected_trainable`)."""
    if name in training:
        return training[name]["trainable"], True
    return gate_models.expected_trainable(name), False


def table(names: list[str], checks: dict, training: dict) -> str:
    """Markdown: one row per network, then the confusion matrix and the threshold margins."""
    rows = ["| network | check | findings (errors, warnings) | max growth | min signal | "
            "trend | trainable? | best accuracy (lr) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    confusion = {(f, t): [] for f in (True, False) for t in (True, False)}
    labels, version = {}, sources_hash()
    for name in names:
        c, t = checks.get(name), training.get(name)
        if c is None:
            continue
        fired = sorted({r.split(":")[0] for r in c["rules"] if not r.endswith(":note")})
        notes = sum(r.endswith(":note") for r in c["rules"])
        trainable, trained = labels[name] = label(name, training)
        word = "yes" if trainable else "**no**"
        acc = f"{t['best_accuracy']:.2f} ({t['best_lr']:g})" if t else "not trained here"
        stale = "" if c.get("sources") == version else " †"
        rows.append(f"| {name}{stale} | {'pass' if c['passed'] else '**FAIL**'} | "
                    f"{', '.join(fired) or '-'}{f' (+{notes} notes)' if notes else ''} | "
                    f"{_g(c['max_growth'])} | {_g(c['min_signal'])} | {_g(c['trend_change'])} | "
                    f"{word if trained else word + ' (expected)'} | {acc} |")
        confusion[(not c["passed"], trainable)].append(name)
    rows += ["", "| check \\ label | untrainable | trainable |", "| --- | --- | --- |"]
    for failed, word in ((True, "failed"), (False, "passed")):
        rows.append(f"| {word} | {len(confusion[(failed, False)])} | "
                    f"{len(confusion[(failed, True)])} |")
    trainable = [n for n, (ok, _) in labels.items() if ok]
    untrainable = [n for n, (ok, _) in labels.items() if not ok]
    trained = sum(from_training for _, from_training in labels.values())
    rows += ["", f"false alarms: {len(confusion[(True, True)])}/{len(trainable)} trainable "
                 f"networks failed ({', '.join(confusion[(True, True)]) or 'none'}); detection: "
                 f"{len(confusion[(True, False)])}/{len(untrainable)} untrainable networks failed "
                 f"(missed: {', '.join(confusion[(False, False)]) or 'none'}); labels from "
                 f"training here: {trained}/{len(labels)}"]
    if any(checks[n].get("sources") != version for n in labels):
        rows.append("† checked by an earlier version of onnxinit's sources (rerun to refresh)")
    rows += margins(trainable, untrainable, checks)
    return "\n".join(rows)


def margins(trainable: list[str], untrainable: list[str], checks: dict) -> list[str]:
    """For each threshold, the extreme value a trainable network reaches: a default beyond it
    raises no false alarm; and which untrainable networks it still catches."""
    if not trainable:
        return []
    lines = [""]
    worst_growth = max(trainable, key=lambda n: checks[n]["max_growth"])
    worst_signal = min(trainable, key=lambda n: checks[n]["min_signal"])
    lines.append(f"largest main-path growth of a trainable network: "
                 f"{_g(checks[worst_growth]['max_growth'])} ({worst_growth}); "
                 f"--max-growth {DEFAULT_MAX_GROWTH:g} catches by growth: "
                 + (", ".join(n for n in untrainable
                              if checks[n]["max_growth"] > DEFAULT_MAX_GROWTH) or "none"))
    lines.append(f"smallest body signal of a trainable network: "
                 f"{_g(checks[worst_signal]['min_signal'])} ({worst_signal}); "
                 f"--min-var {DEFAULT_MIN_VAR:g} catches by signal: "
                 + (", ".join(n for n in untrainable
                              if checks[n]["min_signal"] < DEFAULT_MIN_VAR) or "none"))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(gate_models.NETWORKS))
    parser.add_argument("--no-train", action="store_true", help="check only")
    parser.add_argument("--no-check", action="store_true", help="train only")
    parser.add_argument("--table", action="store_true", help="print the cached table only")
    args = parser.parse_args()
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in gate_models.NETWORKS]
    if unknown:
        parser.error(f"unknown networks: {', '.join(unknown)}")
    torch_threads()
    if not (args.no_train or args.table):
        train_missing(names)
    if not (args.no_check or args.table):
        check_missing(names)
    print(table(names, _load(CHECK_FILE), _load(TRAINING_FILE)))


def torch_threads() -> None:
    """One thread per process: on a shared machine more threads only contend."""
    import torch

    torch.set_num_threads(1)


if __name__ == "__main__":
    main()
