"""GroupNorm networks built in PyTorch for the real-export checks (issue 10: a GroupNorm's
statistics over a Conv's map): torchvision's ResNet-18 with ``nn.GroupNorm(8, c)`` in place of
every BatchNorm (ResNet-GN), a diffusion-style residual block stack (Conv, GroupNorm(8), SiLU
twice with a skip, a stride-2 Conv down), and the same stack with a hand-written GroupNorm that
computes its statistics on ``x.view(N, G, -1)`` (``mean``, ``var(unbiased=False)``) as custom
nets do. ``nn.GroupNorm`` exports (opset 17) as Reshape to ``[N, G, -1]``,
InstanceNormalization and a Reshape back; the hand-written one as ReduceMean, Sub, Pow and
ReduceMean. Each builder takes the image side and returns ``(module, example shape without the
batch)``."""

from __future__ import annotations


def resnet18_gn():
    def build(size: int):
        import torchvision
        from torch import nn

        model = torchvision.models.resnet18(weights=None, norm_layer=lambda c: nn.GroupNorm(8, c))
        return model, (3, size, size)

    return build


def _group_norm(handwritten: bool, groups: int, channels: int):
    import torch
    from torch import nn

    if not handwritten:
        return nn.GroupNorm(groups, channels)

    class GroupNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))

        def forward(self, x):
            n = x.shape[0]
            h = x.reshape(n, groups, -1)
            mean = h.mean(dim=2, keepdim=True)
            var = ((h - mean) ** 2).mean(dim=2, keepdim=True)
            h = (h - mean) / torch.sqrt(var + 1e-5)
            return h.reshape(x.shape) * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)

    return GroupNorm()


def gn_blocks(handwritten: bool = False, width: int = 32, levels: int = 2, groups: int = 8):
    """Conv 3 -> width; per level a residual block ``x + Conv(SiLU(GN(Conv(SiLU(GN(x))))))``
    and a stride-2 Conv doubling the width; GN + SiLU, global pool and a linear head."""

    def build(size: int):
        from torch import nn

        class Block(nn.Module):
            def __init__(self, c):
                super().__init__()
                self.body = nn.Sequential(
                    _group_norm(handwritten, groups, c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1),
                    _group_norm(handwritten, groups, c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1))

            def forward(self, x):
                return x + self.body(x)

        layers, c = [nn.Conv2d(3, width, 3, padding=1)], width
        for _ in range(levels):
            layers += [Block(c), nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)]
            c *= 2
        layers += [_group_norm(handwritten, groups, c), nn.SiLU(), nn.AdaptiveAvgPool2d(1),
                   nn.Flatten(), nn.Linear(c, 10)]
        return nn.Sequential(*layers), (3, size, size)

    return build
