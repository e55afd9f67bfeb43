"""Export torchvision models with torch.onnx's default (dynamo) exporter, as many users do: eval
mode, random initialization (``torch.manual_seed(SEED)``), nothing downloaded. The exporter's
optimizer folds every BatchNormalization into the Conv before it (in training mode too), so
the graphs are convnets without normalization: the case ``benchmarks/real_exports.py --onnx``
then measures.

    pip install torch==2.14.1 torchvision onnxscript
    python benchmarks/dynamo_exports.py OUT_DIR mobilenet_v3_small mnasnet1_0 vit_b_16@1
    python benchmarks/real_exports.py --onnx OUT_DIR/mobilenet_v3_small_s0.onnx,... --runs 2 \
        --before CHECKOUT

``NAME@SEED`` picks the seed (default 0); images are 64x64 (224x224 for ViT and MaxViT, whose
patch grids need it); the batch axis is dynamic; weights go to external data next to the file.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path


def export(name: str, seed: int, out: Path) -> Path:
    import torch
    import torchvision

    torch.manual_seed(seed)
    size = 224 if name in ("vit_b_16", "maxvit_t") else 64
    model = getattr(torchvision.models, name)(weights=None).eval()
    path = out / f"{name}_s{seed}.onnx"
    torch.onnx.export(model, (torch.randn(2, 3, size, size),), str(path), dynamo=True,
                      input_names=["x"], dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    return path


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    warnings.simplefilter("ignore")
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    for arg in argv[1:]:
        name, _, seed = arg.partition("@")
        print(export(name, int(seed or 0), out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
