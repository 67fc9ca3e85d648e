"""Patch description network (PDN) and EfficientAD's autoencoder (Batzner et al., WACV 2024, Tab. 6-8).

Lineside runs the PDN with padding so its output grid is exactly input/4 (the grid of the distillation
target); the paper trains the anomaly detector with padding off and pads the map by 4 px instead.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Pdn", "Autoencoder", "pdn_grid", "PDN_WIDTHS", "equalize_channels", "keep_outputs"]

# widths of the hidden convs per size; "tiny" exists for tests and smoke runs only
PDN_WIDTHS: dict[str, tuple[int, ...]] = {"s": (128, 256, 256), "m": (256, 512, 512, 512), "tiny": (16, 32, 32)}


def pdn_grid(size_px: int) -> int:
    """Output side of a padded PDN for a square input (conv4 p3, pool2 p1, conv4 p3, pool2 p1, conv3 p1, conv4)."""
    s = size_px + 3
    s = (s + 2 - 2) // 2 + 1
    s = s + 3
    s = (s + 2 - 2) // 2 + 1
    return s - 3


class Pdn(nn.Module):
    """PDN-S (3 hidden convs) or PDN-M (4 hidden + a final 1x1), padded, ReLU, average pooling."""

    def __init__(self, out_channels: int, widths: Sequence[int]) -> None:
        super().__init__()
        w = list(widths)
        layers: list[nn.Module] = [
            nn.Conv2d(3, w[0], 4, padding=3), nn.ReLU(inplace=True), nn.AvgPool2d(2, 2, padding=1),
            nn.Conv2d(w[0], w[1], 4, padding=3), nn.ReLU(inplace=True), nn.AvgPool2d(2, 2, padding=1),
        ]
        if len(w) == 3:  # S
            layers += [nn.Conv2d(w[1], w[2], 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(w[2], out_channels, 4)]
        else:  # M
            layers += [
                nn.Conv2d(w[1], w[2], 1), nn.ReLU(inplace=True),
                nn.Conv2d(w[2], w[3], 3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(w[3], out_channels, 4), nn.ReLU(inplace=True),
                nn.Conv2d(out_channels, out_channels, 1),
            ]
        self.net = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # ImageNet mean/std inside the network, as the contract takes [0, 1] RGB
        mean = image.new_tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = image.new_tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        return self.net((image - mean) / std)


@torch.no_grad()
def keep_outputs(pdn: Pdn, c: int) -> None:
    """Slice the PDN's last convolution to its first c output channels: the same outputs there, fewer computed."""
    head = pdn.net[-1]
    assert isinstance(head, nn.Conv2d) and head.bias is not None
    assert head.stride == (1, 1) and head.groups == 1 and head.dilation == (1, 1)
    smaller = nn.Conv2d(head.in_channels, c, head.kernel_size, padding=head.padding, device=head.weight.device,
                        dtype=head.weight.dtype)
    smaller.weight.copy_(head.weight[:c])
    smaller.bias.copy_(head.bias[:c])
    pdn.net[-1] = smaller


@torch.no_grad()
def equalize_channels(pdn: Pdn, images: torch.Tensor, batch_size: int = 8, negative_weight: float = 0.3) -> None:
    """Rescale the channels between consecutive convolutions so hidden activation channels have similar
    ranges on these images; the network computes the same function (to float rounding).

    Conv -> ReLU -> AvgPool -> Conv is positively homogeneous per channel, so dividing channel i of the first
    conv (weights and bias) by s_i and multiplying input channel i of the next conv by s_i changes nothing but
    the ranges (cross-layer equalisation, Nagel et al. 2019, driven by activation ranges). INT8 activations
    have one scale per tensor, and the distilled teacher's channels span 30x: its output SQNR was 13 dB with
    Conv+ReLU quantized together, 24 dB equalised. s_i follows the channel's positive peak, but at least
    `negative_weight` x its pre-activation peak: a graph that quantizes the conv output before the ReLU sees
    the negative side too, and a nearly dead channel scaled up by its tiny positive peak would take over that
    range (measured: 0 dB).
    """
    convs = [m for m in pdn.net if isinstance(m, nn.Conv2d)]
    pos: dict[nn.Conv2d, torch.Tensor] = {}
    mag: dict[nn.Conv2d, torch.Tensor] = {}

    def keep_peaks(conv: nn.Conv2d, _: object, out: torch.Tensor) -> None:
        p, m = out.clamp_min(0).amax(dim=(0, 2, 3)), out.abs().amax(dim=(0, 2, 3))
        pos[conv] = torch.maximum(pos[conv], p) if conv in pos else p
        mag[conv] = torch.maximum(mag[conv], m) if conv in mag else m

    hooks = [c.register_forward_hook(keep_peaks) for c in convs[:-1]]
    try:
        for i in range(0, len(images), batch_size):
            pdn(images[i : i + batch_size])
    finally:
        for h in hooks:
            h.remove()
    for a, b in zip(convs[:-1], convs[1:]):
        live = pos[a] > 0
        if not live.any():
            continue
        r = torch.maximum(pos[a], negative_weight * mag[a])
        # dead channels (never positive) keep scale 1: their output is 0 whatever the scale
        s = torch.where(live, r / r[live].mean(), torch.ones_like(r))
        a.weight.div_(s.view(-1, 1, 1, 1))
        if a.bias is not None:
            a.bias.div_(s)
        b.weight.mul_(s.view(1, -1, 1, 1))


class Autoencoder(nn.Module):
    """EfficientAD autoencoder: 5 strided convs and one spanning the rest to a 64-d code, 6 upsample+conv stages,
    output on the grid."""

    def __init__(self, size_px: int, out_channels: int, grid: int) -> None:
        super().__init__()
        self.grid = grid
        enc: list[nn.Module] = []
        c_in = 3
        for c in (32, 32, 64, 64, 64):
            enc += [nn.Conv2d(c_in, c, 4, stride=2, padding=1), nn.ReLU(inplace=True)]
            c_in = c
        enc.append(nn.Conv2d(64, 64, max(size_px // 32, 1)))
        self.encoder = nn.Sequential(*enc)
        # the reference sizes at 256 px are 3, 8, 15, 32, 63, 127; scaled with the input here
        self.sizes = [max(size_px // d + o, 2) for d, o in ((64, -1), (32, 0), (16, -1), (8, 0), (4, -1), (2, -1))]
        self.dec_convs = nn.ModuleList([nn.Conv2d(64, 64, 4, padding=2) for _ in self.sizes])
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Sequential(
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(64, out_channels, 3, padding=1)
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        mean = image.new_tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = image.new_tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        x = self.encoder((image - mean) / std)
        for size, conv in zip(self.sizes, self.dec_convs):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            x = self.dropout(F.relu(conv(x)))
        x = F.interpolate(x, size=(self.grid, self.grid), mode="bilinear", align_corners=False)
        return self.head(x)
