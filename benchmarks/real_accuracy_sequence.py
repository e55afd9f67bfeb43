"""Prediction accuracy of `analyze` on real sequence and attention networks (issue 10): GPT-2 and
BERT-base (Hugging Face, default configurations, built from config objects), vit_b_16 and swin_t
(torchvision), LSTM/GRU classifiers (2 layers, hidden 128, 32 steps) and a Llama-style decoder
(Hugging Face LlamaModel, 4 layers, hidden 512: RMSNorm written out as ops); random initialization,
nothing downloaded; exported in training mode exactly as the README says (tests/real/sequence.py).

Prints per model: float activation tensors compared, the share whose predicted variance is within
10% of the one onnxruntime measures (Dropout as identity, BatchNormalization on batch statistics:
PyTorch's train() function without dropout noise), within 2x, the median predicted/measured,
whether any prediction is NaN/inf (or analyze refused the model for one), coverage (tensors
predicted), the seconds analyze took, and the worst tensor.

    python benchmarks/real_accuracy_sequence.py                   # full size, batch 8, seq 128
    python benchmarks/real_accuracy_sequence.py --size small      # the test suite's configs
    python benchmarks/real_accuracy_sequence.py --models llama --runs 4  # measured over 4 batches
    python benchmarks/real_accuracy_sequence.py --size recurrent  # docs/recurrent.md's variants
    python benchmarks/real_accuracy_sequence.py --size recurrent_more  # its second table
    python benchmarks/real_accuracy_sequence.py --onnx a.onnx,b.onnx --runs 16  # given exports
    python benchmarks/real_accuracy_sequence.py --models lstm,gru --seed 1  # other weights
    PYTHONPATH=/path/to/other/checkout python benchmarks/real_accuracy_sequence.py  # before/after

The onnxinit measured is whichever the interpreter imports first (printed on the first line): put
another checkout on PYTHONPATH to measure it with the same models and comparison.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # tests.real.sequence; an onnxinit on PYTHONPATH comes first

import onnxinit  # noqa: E402
from tests.real.sequence import SIZES, compare, export  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--models", default=None, help="comma-separated (default: all)")
    parser.add_argument("--onnx", default=None,
                        help="comma-separated ONNX files to compare instead (input batch axis "
                             "dynamic: a tf2onnx Keras export)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0,
                        help="torch's seed for the built models' weights (default 0)")
    parser.add_argument("--worst", type=int, default=1, help="worst tensors listed per model")
    parser.add_argument("--runs", type=int, default=None,
                        help="measured batches, pooled (default: the model's own, 1 unless it "
                             "draws random masks): a variance within a token of 8 samples is "
                             "measured to 10-15%% on one batch")
    args = parser.parse_args()
    specs = SIZES[args.size]
    names = args.models.split(",") if args.models else list(specs)
    files = {Path(f).stem: Path(f) for f in args.onnx.split(",")} if args.onnx else {}
    names = list(files) if files else names
    warnings.simplefilter("ignore")
    print(f"onnxinit from {Path(onnxinit.__file__).parent}; size {args.size}, "
          f"batch {args.batch_size}" + (f", {args.runs} batches" if args.runs else ""))
    print(f"{'model':18} {'tensors':>7} {'in 10%':>7} {'in 2x':>7} {'median p/m':>10} "
          f"{'NaN':>4} {'coverage':>8} {'analyze s':>9}  worst", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            spec = specs.get(name)
            path = files.get(name) or export(spec, Path(tmp) / f"{name}.onnx", args.seed)
            r = compare(path, batch_size=args.batch_size,
                        runs=args.runs or (spec.runs if spec else 1))
            if r.error is not None:
                print(f"{name:18} analyze refused: {r.error[:160]}", flush=True)
                continue
            worst = r.worst(args.worst)
            print(f"{name:18} {len(r.tensors):7} {100 * r.within_10:6.1f}% "
                  f"{100 * r.within_2x:6.1f}% {r.median_ratio:10.3f} "
                  f"{'yes' if r.non_finite else 'no':>4} {100 * r.coverage:7.1f}% "
                  f"{r.analyze_s:9.1f}  {worst[0]}", flush=True)
            for line in worst[1:]:
                print(f"{'':18} {line}")
            if name not in files:
                path.unlink()


if __name__ == "__main__":
    main()
