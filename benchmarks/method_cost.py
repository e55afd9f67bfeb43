"""Seconds per iteration of onnxinit's gradinit, metainit and nio against their PyTorch
references (tests/references: GradInit's Algorithm 1 with double backward, MetaInit's
gradient quotient with double and triple backward, NIO's sub-batch gradients of one forward with
double backward), on the same model, batches and thread count, measured in this one run.

Models: the reference twins (tests/references/twins.py) at bench size: ``resnet`` (the
normalization-free ResNet-20 with max pooling, width 16, 32x32 images) and ``transformer``
(2 post-LN layers, d 64, 4 heads, sequence 32), float32 on both sides.

Per iteration, both sides: the marginal time ``(t(k2) - t(k1)) / (k2 - k1)`` of runs of k1 and
k2 iterations (set-up: graph building, sessions, torch warm-up, cancels), each t the fastest of
``--repeats`` runs. ``--clock cpu`` (the default) measures the process's CPU time, which on a
loaded machine stays what an idle machine's wall time would be when both sides run one thread;
``--clock wall`` measures elapsed time (use it with more than one thread). onnxinit runs with
``held_out_batches=0`` (the papers' loop: the held-out checks are an extra of onnxinit's and
cost ``held_out_batches x (checkpoints + 2)`` evaluations per run, reported separately).
Hyperparameters are the methods' defaults except GradInit's gamma (0.5: both branches occur on
these models) and MetaInit's lr (0.01, as in the equivalence tests).

    python benchmarks/method_cost.py                      # 1 thread, batch 32 / 8
    python benchmarks/method_cost.py --threads 2 --models resnet
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = ("gradinit", "metainit", "nio")


def twins(name: str, batch: int):
    from tests.references.twins import resnet20_maxpool, transformer

    if name == "resnet":
        return resnet20_maxpool(width=16, image=32, batch_size=batch)
    return transformer(vocab=1000, seq=32, d=64, heads=4, ff=256, batch_size=batch)


def settings(method: str, iterations: int):
    """(onnxinit options, reference keyword arguments) for ``iterations`` iterations."""
    if method == "gradinit":
        return (dict(gradinit_iterations=iterations, gradinit_gamma=0.5),
                dict(iterations=iterations, gamma=0.5))
    if method == "metainit":
        return (dict(metainit_steps=iterations, metainit_lr=0.01),
                dict(iterations=iterations, lr=0.01))
    return dict(nio_iterations=iterations), dict(iterations=iterations)


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def onnxinit_seconds(method, twin, iterations, threads, clock):
    from tests.references.compare import onnxinit_trajectory

    options, _ = settings(method, iterations)
    start = clock()
    _, _, plan, source = onnxinit_trajectory(method, twin, precision="float32", threads=threads,
                                             **options)
    return clock() - start, plan, source


def reference_seconds(method, twin, source, iterations, clock):
    import torch

    from tests.references.gradinit_ref import gradinit_reference
    from tests.references.metainit_ref import metainit_reference
    from tests.references.nio_ref import nio_reference

    reference = {"gradinit": gradinit_reference, "metainit": metainit_reference,
                 "nio": nio_reference}[method]
    _, kwargs = settings(method, iterations)
    start = clock()
    reference(twin, source, dtype=torch.float32, **kwargs)
    return clock() - start


def marginal(measure, k1, k2, repeats):
    best = {k1: math.inf, k2: math.inf}
    for _ in range(repeats):
        for k in (k1, k2):
            best[k] = min(best[k], measure(k))
    return (best[k2] - best[k1]) / (k2 - k1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet", "transformer"],
                        choices=["resnet", "transformer"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--resnet-batch", type=int, default=32)
    parser.add_argument("--transformer-batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--k1", type=int, default=2)
    parser.add_argument("--k2", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                        help="cpu: the process's CPU time (default; one thread); wall: elapsed")
    args = parser.parse_args(argv)
    clock = CLOCKS[args.clock]
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    for model in args.models:
        batch = args.resnet_batch if model == "resnet" else args.transformer_batch
        twin = twins(model, batch)
        for method in args.methods:
            plans = {}

            def ours(k):
                seconds, plan, source = onnxinit_seconds(method, twin, k, args.threads, clock)
                plans[k] = (plan, source)
                return seconds

            mine = marginal(ours, args.k1, args.k2, args.repeats)
            source = plans[args.k2][1]
            theirs = marginal(lambda k: reference_seconds(method, twin, source, k, clock), args.k1,
                              args.k2, args.repeats)
            report = plans[args.k2][0].report
            rows.append((model, batch, method, mine, theirs, report["hessian_vector_products"],
                         report["constraint_steps"], len(report["trajectory"])))
            print(f"  {model} {method}: onnxinit {mine:.4f} s/it, torch {theirs:.4f} s/it",
                  file=sys.stderr, flush=True)
    print(f"torch {torch.__version__}, {args.threads} thread(s) on both sides; marginal "
          f"{args.clock} seconds per iteration between {args.k1} and {args.k2} iterations, "
          f"fastest of {args.repeats}")
    print("| model | batch | method | onnxinit s/it | torch reference s/it | ratio | products | "
          "constraint steps |")
    print("|---|---|---|---|---|---|---|---|")
    for model, batch, method, mine, theirs, products, constraint, total in rows:
        print(f"| {model} | {batch} | {method} | {mine:.4f} | {theirs:.4f} | "
              f"{mine / theirs:.2f} | {products} | {constraint}/{total} |")


if __name__ == "__main__":
    main()
