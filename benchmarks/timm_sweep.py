"""A sweep of timm architectures the other benchmarks do not build (issue 10, stop 45): norm-free
networks with scaled weight standardization, re-parameterisable multi-branch blocks (training
form), ghost and split-attention blocks, high-resolution and aggregation trees, dual paths,
MLP mixers, pooling and conv-attention hybrids, cross-covariance and talking-heads attention,
nested and pyramid transformers. Each model is built with ``timm.create_model(name,
pretrained=False, **keywords)`` (random initialization, nothing downloaded) at the smallest size
it allows (64x64 or 96x96; narrow variants, fewer layers where timm takes ``depth``), exported in
training mode as the README says (``tests/real/exports.export_module``), predicted with
``onnxinit.analyze`` and measured with onnxruntime at batch 8 over ``--batches`` batches
(``tests/real/compare``: every float activation tensor; Dropout as the identity; random masks,
BatchNormalization's running statistics and other auxiliary outputs left out).

timm is optional: nothing in the package or the tests needs it. Install it apart, e.g.

    python -m pip install --target /tmp/pkgs timm==1.0.22 --no-deps
    PYTHONPATH=$PWD:/tmp/pkgs python benchmarks/timm_sweep.py                 # every model
    PYTHONPATH=$PWD:/tmp/pkgs python benchmarks/timm_sweep.py --models repvgg,levit --batches 8
    PYTHONPATH=$PWD:/tmp/pkgs python benchmarks/timm_sweep.py --worst 8       # 8 worst tensors

Each model runs in a subprocess with a time limit (``--timeout``), so a model the exporter refuses
or that hangs is a row with its error, not the end of the sweep. Columns: float activation
tensors compared, the share within 10% of the measured variance, within 2x, coverage (tensors
predicted), whether a prediction is NaN/inf, the seconds of load plus analysis, and the worst
tensor (max(pred/meas, meas/pred), op). Exports are kept in ``ONNXINIT_EXPORT_CACHE`` when set
(a temporary folder otherwise) as ``timm_{name}.onnx`` (``timm_{name}_seed{N}.onnx`` for
``--seed N``, torch's seed for the weights). The onnxinit measured is the one the interpreter
imports first: put another checkout first on PYTHONPATH for a before/after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # tests.real; an onnxinit on PYTHONPATH comes first

_VIT = dict(img_size=64)
# name: (timm model, image side, keywords for timm.create_model)
MODELS = {
    # norm-free: scaled weight standardization, gains, no normalization layer
    "nf_resnet26": ("nf_resnet26", 64, {}),
    "nf_regnet_b0": ("nf_regnet_b0", 64, {}),
    "eca_nfnet_l0": ("eca_nfnet_l0", 64, {}),
    # re-parameterisable multi-branch blocks, in their training form
    "repvgg": ("repvgg_a0", 64, {}),
    "mobileone": ("mobileone_s0", 64, {}),
    "fastvit": ("fastvit_t8", 64, {}),
    "repghost": ("repghostnet_050", 64, {}),
    # ghost, selective-kernel, split-attention, multi-scale residual blocks
    "ghostnet": ("ghostnet_050", 64, {}),
    "skresnet": ("skresnet18", 64, {}),
    "resnest": ("resnest14d", 64, {}),
    "res2net": ("res2net50_14w_8s", 64, {}),
    # aggregation trees, dual paths, high-resolution branches, one-shot aggregation
    "dla": ("dla46_c", 64, {}),
    "dpn": ("dpn48b", 64, {}),
    "hrnet": ("hrnet_w18_small", 64, {}),
    "vovnet": ("ese_vovnet19b_dw", 64, {}),
    "selecsls": ("selecsls42b", 64, {}),
    "cspdarknet": ("cs3darknet_s", 64, {}),
    "xception": ("xception41", 64, {}),
    "tresnet": ("tresnet_m", 64, {}),
    # small searched / scaled convnets
    "rexnet": ("rexnet_100", 64, {}),
    "hardcorenas": ("hardcorenas_a", 64, {}),
    "lcnet": ("lcnet_050", 64, {}),
    "tinynet": ("tinynet_e", 64, {}),
    "mobilenetv4": ("mobilenetv4_conv_small", 64, {}),
    "gernet": ("gernet_s", 64, {}),
    # MLP mixers and pooling mixers
    "mixer": ("mixer_s16_224", 64, _VIT),
    "resmlp": ("resmlp_12_224", 64, _VIT),
    "gmlp": ("gmlp_ti16_224", 64, _VIT),
    "convmixer": ("convmixer_768_32", 64, {}),
    "poolformer": ("poolformer_s12", 64, {}),
    # conv / attention hybrids
    "edgenext": ("edgenext_xx_small", 64, {}),
    "mobilevitv2": ("mobilevitv2_050", 64, {}),
    "levit": ("levit_128s", 64, dict(img_size=64)),
    "coatnet": ("coatnet_nano_rw_224", 64, dict(img_size=64)),
    "efficientvit": ("efficientvit_b0", 64, {}),
    # transformers with other attentions or token layouts
    "xcit": ("xcit_nano_12_p16_224", 64, dict(_VIT, depth=4)),
    "cait": ("cait_xxs24_224", 64, dict(_VIT, depth=4)),
    "pit": ("pit_ti_224", 64, _VIT),
    "nest": ("nest_tiny", 64, _VIT),
    "twins": ("twins_svt_small", 64, {}),
    "volo": ("volo_d1_224", 64, _VIT),
    "beit": ("beit_base_patch16_224", 64, dict(_VIT, depth=4, embed_dim=192, num_heads=3)),
    "convit": ("convit_tiny", 64, dict(_VIT, depth=4)),
    # a second tier: inception depthwise mixers, star (element-wise product) blocks, partial
    # convolutions, gated CNN blocks, learnable-affine HGNet, bidirectional-LSTM mixing,
    # ghost blocks with decoupled attention
    "inception_next": ("inception_next_atto", 64, {}),
    "starnet": ("starnet_s050", 64, {}),
    "fasternet": ("fasternet_t0", 64, {}),
    "mambaout": ("mambaout_femto", 64, {}),
    "hgnetv2": ("hgnetv2_b0", 64, {}),
    "sequencer": ("sequencer2d_s", 64, {}),
    "ghostnetv2": ("ghostnetv2_100", 64, {}),
}


def build(name: str):
    """(timm module, input shape)."""
    try:
        import timm
    except ImportError:
        sys.exit("timm_sweep.py needs timm (an optional benchmark dependency): "
                 "python -m pip install --target DIR timm==1.0.22 --no-deps, "
                 "then put DIR at the end of PYTHONPATH")
    model, side, keywords = MODELS[name]
    return timm.create_model(model, pretrained=False, **keywords), (3, side, side)


def one(name: str, directory: Path, batches: int, worst: int, seed: int = 0) -> dict:
    import torch

    from tests.real.compare import compare
    from tests.real.exports import export_module

    path = directory / f"timm_{name}{f'_seed{seed}' if seed else ''}.onnx"
    if not path.exists():
        torch.manual_seed(seed)
        module, shape = build(name)
        export_module(module, shape, path)
    r = compare(path, batch_size=8, runs=batches)
    non_finite = any(r.predicted is not None and not np.isfinite(r.predicted) for r in r.rows)
    return {"name": name, "tensors": len(r.rows), "within_10": r.within_10,
            "within_2x": r.within_2x, "coverage": r.coverage, "non_finite": non_finite,
            "median": r.median_ratio, "analyze_s": r.analyze_s, "worst": r.worst(max(worst, 1))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batches", type=int, default=2, help="batches of 8 measured")
    parser.add_argument("--worst", type=int, default=0, help="print each model's N worst")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per model")
    parser.add_argument("--seed", type=int, default=0,
                        help="torch's seed for the built models' weights (default 0)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    directory = Path(os.environ.get("ONNXINIT_EXPORT_CACHE") or tempfile.mkdtemp())
    directory.mkdir(parents=True, exist_ok=True)
    if args.one:
        warnings.simplefilter("ignore")
        print(json.dumps(one(args.one, directory, args.batches, args.worst, args.seed)))
        return
    try:
        import timm  # noqa: F401  (checked here once, for a clear message)
    except ImportError:
        sys.exit("timm_sweep.py needs timm (an optional benchmark dependency): "
                 "python -m pip install --target DIR timm==1.0.22 --no-deps, "
                 "then put DIR at the end of PYTHONPATH")
    env = {**os.environ, "ONNXINIT_EXPORT_CACHE": str(directory)}
    print(f"{'model':16} {'tensors':>7} {'within 10%':>10} {'within 2x':>9} {'coverage':>8} "
          f"{'NaN/inf':>7} {'analyze s':>9}  worst", flush=True)
    for name in args.models.split(","):
        try:
            done = subprocess.run(
                [sys.executable, __file__, "--one", name, "--batches", str(args.batches),
                 "--worst", str(args.worst), "--seed", str(args.seed)], capture_output=True,
                text=True, env=env, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            print(f"{name:16} timed out after {args.timeout} s", flush=True)
            continue
        lines = done.stdout.strip().splitlines()
        if done.returncode or not lines:
            last = (done.stderr.strip().splitlines() or ["?"])[-1]
            print(f"{name:16} failed: {last[:150]}", flush=True)
            continue
        r = json.loads(lines[-1])
        print(f"{name:16} {r['tensors']:7} {100 * r['within_10']:9.1f}% "
              f"{100 * r['within_2x']:8.1f}% {100 * r['coverage']:7.1f}% "
              f"{'yes' if r['non_finite'] else 'no':>7} {r['analyze_s']:9.2f}  {r['worst'][0]}",
              flush=True)
        for line in r["worst"][1:args.worst]:
            print(f"{'':16} {line}", flush=True)


if __name__ == "__main__":
    main()
