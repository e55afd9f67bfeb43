"""Decoder networks built in PyTorch for the real-export checks (issue 10: ConvTranspose and
upsampling of spatially correlated maps): a DCGAN generator (with and without BatchNorm), a
small U-Net (strided convs down, ConvTranspose or nearest Upsample up, skip Concat) and a conv
autoencoder. Each builder takes the input size (the latent's spatial size for the generators,
the image side for the others) and returns ``(module, example shape without the batch)``."""

from __future__ import annotations


def dcgan(batch_norm: bool = True, width: int = 64, latent: int = 100):
    """DCGAN's generator (Radford et al.): a 4x4 ConvTranspose of the latent, then stride-2
    4x4 ConvTransposes doubling the map, BatchNorm + ReLU between, Tanh at the end."""

    def build(size: int):
        from torch import nn

        def block(c_in, c_out, stride, pad):
            layers = [nn.ConvTranspose2d(c_in, c_out, 4, stride, pad, bias=not batch_norm)]
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            return layers + [nn.ReLU()]

        layers = block(latent, width * 8, 1, 0) + block(width * 8, width * 4, 2, 1) \
            + block(width * 4, width * 2, 2, 1) + block(width * 2, width, 2, 1)
        layers += [nn.ConvTranspose2d(width, 3, 4, 2, 1, bias=not batch_norm), nn.Tanh()]
        return nn.Sequential(*layers), (latent, size, size)

    return build


def unet(upsample: str = "transpose", width: int = 16, depth: int = 3):
    """A small U-Net: per level two 3x3 convs (BatchNorm, ReLU), a stride-2 conv down; up by a
    stride-2 2x2 ConvTranspose (``"transpose"``) or a nearest (``"nearest"``) or bilinear
    (``"bilinear"``, align_corners) 2x Upsample and a 3x3 conv, the skip concatenated, two 3x3 convs; a 1x1 conv to 2 classes."""

    def build(size: int):
        import torch
        from torch import nn

        def double(c_in, c_out):
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())

        def up(c_in, c_out):
            if upsample == "transpose":
                return nn.ConvTranspose2d(c_in, c_out, 2, stride=2)
            if upsample == "bilinear":  # milesial/Pytorch-UNet's bilinear=True
                return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear",
                                                 align_corners=True),
                                     nn.Conv2d(c_in, c_out, 3, padding=1))
            return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                 nn.Conv2d(c_in, c_out, 3, padding=1))

        class UNet(nn.Module):
            def __init__(self):
                super().__init__()
                widths = [width * 2 ** i for i in range(depth + 1)]
                self.first = double(3, widths[0])
                self.down = nn.ModuleList(nn.Conv2d(w, w, 3, stride=2, padding=1)
                                          for w in widths[:-1])
                self.enc = nn.ModuleList(double(a, b) for a, b in zip(widths, widths[1:]))
                self.up = nn.ModuleList(up(b, a) for a, b in zip(widths, widths[1:]))
                self.dec = nn.ModuleList(double(2 * a, a) for a in widths[:-1])
                self.last = nn.Conv2d(widths[0], 2, 1)

            def forward(self, x):
                skips = [self.first(x)]
                for down, enc in zip(self.down, self.enc):
                    skips.append(enc(down(skips[-1])))
                x = skips.pop()
                for i in reversed(range(depth)):
                    x = self.dec[i](torch.cat([skips[i], self.up[i](x)], dim=1))
                return self.last(x)

        return UNet(), (3, size, size)

    return build


def autoencoder(width: int = 16):
    """A conv autoencoder without normalization: stride-2 3x3 convs + ReLU down (three),
    stride-2 3x3 ConvTransposes (output_padding 1) + ReLU up, a Sigmoid at the end."""

    def build(size: int):
        from torch import nn

        return nn.Sequential(
            nn.Conv2d(3, width, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(2 * width, 4 * width, 3, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(4 * width, 2 * width, 3, 2, 1, output_padding=1), nn.ReLU(),
            nn.ConvTranspose2d(2 * width, width, 3, 2, 1, output_padding=1), nn.ReLU(),
            nn.ConvTranspose2d(width, 3, 3, 2, 1, output_padding=1), nn.Sigmoid(),
        ), (3, size, size)

    return build





def bilinear_kernel(channels: int, k: int):
    """FCN's ``get_upsampling_weight``: a ``[C, C, k, k]`` ConvTranspose weight that upsamples
    each channel bilinearly (the identity across channels)."""
    import numpy as np
    import torch

    f = (k + 1) // 2
    centre = f - 1 if k % 2 == 1 else f - 0.5
    line = 1 - np.abs(np.arange(k) - centre) / f
    w = np.zeros((channels, channels, k, k), np.float32)
    w[np.arange(channels), np.arange(channels)] = np.outer(line, line)
    return torch.from_numpy(w)


def fcn8s(classes: int = 21):
    """FCN-8s (Long et al.) on torchvision's VGG-11 features (random weights): scores at
    strides 32, 16 and 8 fused by Add after ConvTransposes whose weights are the fixed bilinear
    upsampling kernels of FCN's initialisation (2x, 2x, then 8x: k 4 s 2 pad 1, k 16 s 8 pad
    4, no crops), ``classes`` score channels."""

    def build(size: int):
        import torchvision
        from torch import nn

        class FCN8s(nn.Module):
            def __init__(self):
                super().__init__()
                features = torchvision.models.vgg11(weights=None).features
                self.to_pool3, self.to_pool4 = features[:11], features[11:16]
                self.to_pool5 = features[16:]
                self.fc = nn.Sequential(nn.Conv2d(512, 256, 7, padding=3), nn.ReLU(),
                                        nn.Conv2d(256, 256, 1), nn.ReLU(),
                                        nn.Conv2d(256, classes, 1))
                self.score_pool4 = nn.Conv2d(512, classes, 1)
                self.score_pool3 = nn.Conv2d(256, classes, 1)
                self.up2 = nn.ConvTranspose2d(classes, classes, 4, 2, 1, bias=False)
                self.up_pool4 = nn.ConvTranspose2d(classes, classes, 4, 2, 1, bias=False)
                self.up8 = nn.ConvTranspose2d(classes, classes, 16, 8, 4, bias=False)
                for up in (self.up2, self.up_pool4, self.up8):
                    up.weight.data.copy_(bilinear_kernel(classes, up.kernel_size[0]))

            def forward(self, x):
                pool3 = self.to_pool3(x)
                pool4 = self.to_pool4(pool3)
                score = self.up2(self.fc(self.to_pool5(pool4))) + self.score_pool4(pool4)
                score = self.up_pool4(score) + self.score_pool3(pool3)
                return self.up8(score)

        return FCN8s(), (3, size, size)

    return build
__all__ = ["autoencoder", "bilinear_kernel", "dcgan", "fcn8s", "unet"]
