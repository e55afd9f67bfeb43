"""Seconds per iteration of onnxinit's gradinit, metainit and nio against their PyTorch
references (tests/references: GradInit's Algorithm 1 with double backward, MetaInit's
gradient quotient with double and triple backward, NIO's sub-batch gradients of one forward with
double backward), on the same model, batches and thread count, measured in this one run.

Models: the reference twins (tests/references/twins.py) at bench size: ``resnet`` (the
normalization-free ResNet-20 with max pooling, width 16, 32x32 images) and ``transformer``
(2 post-LN layers, d 64, 4 heads, sequence 32), float32 on both sides.

Per iteration, over the same iterations k1, ..., k2 - 1 on both sides: onnxinit's time from the
end of iteration k1 - 1 to the end of iteration k2 - 1 of one run of k2 iterations (clock read
after every iteration; its graphs and sessions are built in the first iterations, which is why
they are left out), divided by k2 - k1; the reference's marginal time ``(t(k2) - t(k1)) / (k2 -
k1)`` of runs of k1 and k2 iterations. ``--repeats`` repetitions, both sides in turn; the table
gives the medians of the seconds and of the per-repetition ratios. ``--clock cpu`` (the
default) measures the process's CPU time, which on a loaded machine stays close to what an
idle machine's wall time would be when both sides run one thread; ``--clock wall`` measures
elapsed time (use it with more than one thread). onnxinit runs with
``held_out_batches=0`` (the papers' loop: the held-out checks are an extra of onnxinit's and
cost ``held_out_batches x (checkpoints + 2)`` evaluations per run, reported separately).
Hyperparameters are the methods' defaults except GradInit's gamma (0.5: both branches occur on
these models) and MetaInit's lr (0.01, as in the equivalence tests).

    python benchmarks/method_cost.py                      # 1 thread, batch 32 / 8, 3 repeats
    python benchmarks/method_cost.py --threads 2 --models resnet
"""

from __future__ import annotations

import argparse
import statistics
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


def onnxinit_seconds(method, twin, k1, k2, threads, clock):
    """(seconds per iteration over iterations k1..k2-1 of one run of k2 iterations, plan,
    source)."""
    from tests.references.compare import onnxinit_trajectory

    options, _ = settings(method, k2)
    stamps = {}
    _, _, plan, source = onnxinit_trajectory(
        method, twin, observe=lambda t: stamps.__setitem__(t, clock()), precision="float32",
        threads=threads, **options)
    return (stamps[k2 - 1] - stamps[k1 - 1]) / (k2 - k1), plan, source


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


def measure(method, twin, args, clock):
    """Medians over ``args.repeats`` of (onnxinit s/it, reference s/it, their ratio), and the
    last onnxinit plan."""
    ours, theirs, ratios = [], [], []
    for _ in range(args.repeats):
        mine, plan, source = onnxinit_seconds(method, twin, args.k1, args.k2, args.threads,
                                              clock)
        t1 = reference_seconds(method, twin, source, args.k1, clock)
        t2 = reference_seconds(method, twin, source, args.k2, clock)
        reference = (t2 - t1) / (args.k2 - args.k1)
        ours.append(mine)
        theirs.append(reference)
        ratios.append(mine / reference)
    return (statistics.median(ours), statistics.median(theirs), statistics.median(ratios),
            plan)


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
    parser.add_argument("--repeats", type=int, default=3)
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
            mine, theirs, ratio, plan = measure(method, twin, args, clock)
            report = plan.report
            rows.append((model, batch, method, mine, theirs, ratio,
                         report["hessian_vector_products"], report["constraint_steps"],
                         len(report["trajectory"])))
            print(f"  {model} {method}: onnxinit {mine:.4f} s/it, torch {theirs:.4f} s/it, "
                  f"ratio {ratio:.2f}", file=sys.stderr, flush=True)
    print(f"torch {torch.__version__}, {args.threads} thread(s) on both sides; {args.clock} "
          f"seconds per iteration over iterations {args.k1}..{args.k2 - 1}, medians of "
          f"{args.repeats} repetitions")
    print("| model | batch | method | onnxinit s/it | torch reference s/it | ratio (median) | "
          "products | constraint steps |")
    print("|---|---|---|---|---|---|---|---|")
    for model, batch, method, mine, theirs, ratio, products, constraint, total in rows:
        print(f"| {model} | {batch} | {method} | {mine:.4f} | {theirs:.4f} | {ratio:.2f} | "
              f"{products} | {constraint}/{total} |")


if __name__ == "__main__":
    main()
