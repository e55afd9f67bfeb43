"""Real networks built in PyTorch (random initialization, nothing downloaded) and exported to
ONNX in training mode exactly as the README says, cached per process.

    path = exported("resnet50_nonorm", 64)          # a 64x64-input export, built once

``exported(name, size)`` is the whole API: ``name`` is a key of :data:`BUILDERS` (a function
of the input size returning ``(module, example input shape without the batch axis)``), ``size``
the spatial size (images) or sequence length. The batch axis is dynamic. Exports are written to
one temporary directory per process, removed when the process exits (``ONNXINIT_EXPORT_CACHE``
names a persistent one instead), and reused by every caller.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

from . import decoders, group_norm_models

Builder = Callable[[int], tuple[object, tuple[int, ...]]]


def _torchvision(name: str, **kwargs) -> Builder:
    def build(size: int):
        import torchvision

        return getattr(torchvision.models, name)(weights=None, **kwargs), (3, size, size)

    return build


def _no_norm(name: str) -> Builder:
    """A torchvision ResNet with every normalization layer replaced by the identity."""

    def build(size: int):
        import torchvision
        from torch import nn

        model = getattr(torchvision.models, name)(weights=None, norm_layer=lambda c: nn.Identity())
        return model, (3, size, size)

    return build


def _vgg(name: str) -> Builder:
    """torchvision VGG; below 224 the 7x7 adaptive average pool (an upsampling there, which
    the exporter refuses) becomes the identity and the first classifier layer takes the
    features at their own size."""

    def build(size: int):
        import torchvision
        from torch import nn

        model = getattr(torchvision.models, name)(weights=None)
        if size != 224:
            side = size // 32
            model.avgpool = nn.Identity()
            model.classifier[0] = nn.Linear(512 * side * side, 4096)
        return model, (3, size, size)

    return build


def _segmentation(name: str) -> Builder:
    """A torchvision segmentation model, random weights (backbone too), 21 classes."""

    def build(size: int):
        import torchvision

        model = getattr(torchvision.models.segmentation, name)(weights=None,
                                                                weights_backbone=None)
        return model, (3, size, size)

    return build


def _video(name: str, frames: int = 8) -> Builder:
    """A torchvision video classifier, random weights, on ``frames`` frames of ``size`` x
    ``size`` (input ``(3, frames, size, size)``). Below S3D's 16 x 224 x 224 its final
    ``(2, 7, 7)`` average pool (a global pool there) becomes the global average pool it is;
    MViT's positional tables are sized for its input at construction, so it is built for this
    one (``spatial_size``, ``temporal_size``: the same blocks, strides and pooling kernels)."""

    def build(size: int):
        from unittest import mock

        import torchvision
        from torch import nn
        from torchvision.models.video import mvit

        if name.startswith("mvit"):
            original = mvit._mvit

            def sized(**kwargs):
                kwargs.update(spatial_size=(size, size), temporal_size=frames)
                return original(**kwargs)

            with mock.patch.object(mvit, "_mvit", sized):
                model = getattr(torchvision.models.video, name)(weights=None)
        else:
            model = getattr(torchvision.models.video, name)(weights=None)
        if name == "s3d" and (frames, size) != (16, 224):
            model.avgpool = nn.AdaptiveAvgPool3d(1)
        return model, (3, frames, size, size)

    return build


def _optical_flow(name: str) -> Builder:
    """A torchvision optical-flow model, random weights, on one input holding both frames
    (``(6, size, size)``: frame 1's channels, then frame 2's); the output is the last of its
    12 refined flows."""

    def build(size: int):
        import torchvision
        from torch import nn

        class BothFrames(nn.Module):
            def __init__(self):
                super().__init__()
                self.flow = getattr(torchvision.models.optical_flow, name)(weights=None)

            def forward(self, frames):
                return self.flow(frames[:, :3], frames[:, 3:])[-1]

        return BothFrames(), (6, size, size)

    return build


BUILDERS: dict[str, Builder] = {
    "resnet18": _torchvision("resnet18"),
    "resnet18_nonorm": _no_norm("resnet18"),
    "resnet50_nonorm": _no_norm("resnet50"),
    "resnet152_nonorm": _no_norm("resnet152"),
    "vgg11": _vgg("vgg11"),
    "vgg11_bn": _vgg("vgg11_bn"),
    "efficientnet_b0": _torchvision("efficientnet_b0"),
    "mobilenet_v3_small": _torchvision("mobilenet_v3_small"),
    "densenet121": _torchvision("densenet121"),
    "convnext_tiny": _torchvision("convnext_tiny"),
    "regnet_y_400mf": _torchvision("regnet_y_400mf"),
    "vit_b_16": _torchvision("vit_b_16"),
    "swin_t": _torchvision("swin_t"),
    # architectures tried once in issue 10's later rounds (benchmarks/real_exports.py)
    "googlenet": _torchvision("googlenet", aux_logits=False, init_weights=True),
    "mobilenet_v2": _torchvision("mobilenet_v2"),
    "mnasnet1_0": _torchvision("mnasnet1_0"),
    "shufflenet_v2_x1_0": _torchvision("shufflenet_v2_x1_0"),
    "squeezenet1_1": _torchvision("squeezenet1_1"),
    "resnext50_32x4d": _torchvision("resnext50_32x4d"),
    "efficientnet_v2_s": _torchvision("efficientnet_v2_s"),
    "efficientnet_b3": _torchvision("efficientnet_b3"),
    "mobilenet_v3_large": _torchvision("mobilenet_v3_large"),
    "resnet50": _torchvision("resnet50"),
    "vit_b_32": _torchvision("vit_b_32"),
    "lraspp_mobilenet_v3_large": _segmentation("lraspp_mobilenet_v3_large"),
    "swin_v2_t": _torchvision("swin_v2_t"),
    "maxvit_t": _torchvision("maxvit_t"),
    # issue 10's sweep at 224 (stop 40): the classifiers no table listed at full size
    **{name: _torchvision(name) for name in (
        "efficientnet_b1", "efficientnet_b2", "efficientnet_v2_m", "regnet_x_400mf",
        "regnet_y_800mf", "regnet_x_1_6gf", "wide_resnet50_2", "resnet34", "resnet101",
        "densenet169", "shufflenet_v2_x0_5", "shufflenet_v2_x2_0", "mnasnet0_5", "mnasnet1_3",
        "convnext_small", "swin_s", "alexnet", "squeezenet1_0")},
    "vgg16_bn": _vgg("vgg16_bn"),
    "inception_v3": _torchvision("inception_v3", aux_logits=False, init_weights=True),
    # issue 10, stop 41: video classifiers (Conv3d, 3-D pools and windows) and segmentation
    # heads (dilated convs, ASPP's global pool and bilinear Resize), random backbones too
    **{name: _video(name) for name in (
        "r3d_18", "mc3_18", "r2plus1d_18", "s3d", "swin3d_t", "mvit_v2_s")},
    **{name: _segmentation(name) for name in (
        "fcn_resnet50", "deeplabv3_mobilenet_v3_large", "deeplabv3_resnet50")},
    "raft_small": _optical_flow("raft_small"),
    # decoders (ConvTranspose and upsampling of correlated maps: tests/real/decoders.py)
    "dcgan": decoders.dcgan(batch_norm=True),
    "dcgan_nonorm": decoders.dcgan(batch_norm=False),
    "unet_transpose": decoders.unet("transpose"),
    "unet_nearest": decoders.unet("nearest"),
    "unet_bilinear": decoders.unet("bilinear"),
    "autoencoder": decoders.autoencoder(),
    "fcn8s": decoders.fcn8s(),
    # GroupNorm (tests/real/group_norm_models.py)
    "resnet18_gn": group_norm_models.resnet18_gn(),
    "gn_blocks": group_norm_models.gn_blocks(),
    "gn_blocks_handwritten": group_norm_models.gn_blocks(handwritten=True),
}

_CACHE: dict[tuple[str, int], Path] = {}
_DIRECTORIES: dict[str, Path] = {}


def export_directory(prefix: str = "onnxinit-exports-") -> Path:
    """The folder exports go to: ``ONNXINIT_EXPORT_CACHE`` when set (kept), otherwise one
    temporary folder per prefix and process, removed at exit (a CI run exports gigabytes)."""
    named = os.environ.get("ONNXINIT_EXPORT_CACHE")
    if named:
        Path(named).mkdir(parents=True, exist_ok=True)
        return Path(named)
    if prefix not in _DIRECTORIES:
        _DIRECTORIES[prefix] = Path(tempfile.mkdtemp(prefix=prefix))
        atexit.register(shutil.rmtree, _DIRECTORIES[prefix], ignore_errors=True)
    return _DIRECTORIES[prefix]


def export_module(module, example_shape: tuple[int, ...], path: Path, *,
                  input_name: str = "x", integer_input: int = 0, opset: int = 17) -> Path:
    """Export ``module`` in training mode (README): TrainingMode.TRAINING, no constant folding,
    the TorchScript exporter, a dynamic batch axis, IR version <= 10 (onnxruntime's limit).
    ``integer_input`` > 0 feeds token ids below that bound instead of N(0, 1) floats;
    ``opset`` the opset written (17 unless told)."""
    import onnx
    import torch

    module.train()
    if integer_input:
        example = torch.randint(0, integer_input, (2, *example_shape))
    else:
        example = torch.randn(2, *example_shape)
    tmp = path.with_suffix(".tmp.onnx")
    with warnings.catch_warnings():  # the exporter warns about every BatchNorm counter
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (example,), str(tmp), input_names=[input_name],
            training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False, dynamo=False,
            opset_version=opset, dynamic_axes={input_name: {0: "batch"}},
        )
    proto = onnx.load(str(tmp))
    proto.ir_version = min(proto.ir_version, 10)
    onnx.save(proto, str(path))
    tmp.unlink()
    return path


def exported(name: str, size: int) -> Path:
    """Path of ``name`` exported at input size ``size`` (built and exported on first use,
    seeded: the same weights every time)."""
    key = (name, size)
    if key in _CACHE:
        return _CACHE[key]
    path = export_directory() / f"{name}_{size}.onnx"
    if not path.exists():
        import torch

        torch.manual_seed(0)
        module, shape = BUILDERS[name](size)
        export_module(module, shape, path)
    _CACHE[key] = path
    return path
