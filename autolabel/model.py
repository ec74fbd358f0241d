"""The Visual Autolabel U-Net: a torchvision ResNet-18/34 encoder with a bilinear decoder.

The architecture follows the published method (Benson, Song et al. 2025): five encoder stages at 1/2 ... 1/32 resolution, a 1x1 lateral
conv+ReLU on each, a bilinear x2 decoder with a 3x3 conv+ReLU after every
concatenation, and a full-resolution branch joined at the end. The parts come
first, each a small module, then their assembly in :class:`UNet`.

    from autolabel.model import build_model, count_parameters
    model = build_model("resnet18", feature_count=14, segment_count=3)
    count_parameters(model)   # 17,850,371 (weights + BatchNorm buffers)

ImageNet weights (``pretrained=True``) are read from a local file only, never
downloaded: put torchvision's ``resnet18-f37072fd.pth`` / ``resnet34-b627a593.pth``
into ``$AUTOLABEL_WEIGHTS`` or into torch's hub cache (``~/.cache/torch/hub/checkpoints``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

# torchvision's published file names for the ImageNet (IMAGENET1K_V1) weights.
WEIGHT_FILES = {"resnet18": "resnet18-f37072fd.pth", "resnet34": "resnet34-b627a593.pth"}
BASE_MODELS = tuple(WEIGHT_FILES)


class ModelError(ValueError):
    """A model that cannot be built as asked (unknown base model, missing weights file)."""


# ----------------------------------------------------------------------------- parts


class ConvReLU(nn.Sequential):
    """A convolution with bias followed by ReLU; 'same' padding for odd kernels."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.ReLU(inplace=True),
        )


class Encoder(nn.Module):
    """The ResNet's five stages with a new first conv; returns the features at 1/2 ... 1/32."""

    def __init__(self, resnet: torchvision.models.ResNet):
        super().__init__()
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu)
        self.layer1 = nn.Sequential(resnet.maxpool, resnet.layer1)
        self.layer2, self.layer3, self.layer4 = resnet.layer2, resnet.layer3, resnet.layer4

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.stem(x)]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            feats.append(layer(feats[-1]))
        return feats


class UpBlock(nn.Module):
    """Bilinear x2 upsampling, concatenation with a skip, then a 3x3 conv+ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.conv = ConvReLU(in_channels + skip_channels, out_channels, 3)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.conv(torch.cat([x, skip], dim=1))


# ----------------------------------------------------------------------------- assembly

# Encoder widths at 1/2, 1/4, 1/8, 1/16, 1/32 (the same for ResNet-18 and -34).
STAGE_WIDTHS = (64, 64, 128, 256, 512)


class UNet(nn.Module):
    """Encoder, 1x1 laterals, four decoder blocks, the full-resolution branch, 1x1 logits."""

    def __init__(self, resnet: torchvision.models.ResNet, feature_count: int, segment_count: int):
        super().__init__()
        self.encoder = Encoder(resnet)
        self.laterals = nn.ModuleList(ConvReLU(w, w, 1) for w in STAGE_WIDTHS)
        # Deepest first: (input width, skip width, output width).
        self.decoder = nn.ModuleList(
            [UpBlock(512, 256, 512), UpBlock(512, 128, 256), UpBlock(256, 64, 256), UpBlock(256, 64, 128)]
        )
        self.full_res = nn.Sequential(ConvReLU(feature_count, 64, 3), ConvReLU(64, 64, 3))
        self.final = UpBlock(128, 64, 64)
        self.logits = nn.Conv2d(64, segment_count, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        full = self.full_res(x)
        feats = [lat(f) for lat, f in zip(self.laterals, self.encoder(x))]
        y = feats[4]
        for block, skip in zip(self.decoder, reversed(feats[:4])):
            y = block(y, skip)
        return self.logits(self.final(y, full))


# ----------------------------------------------------------------------------- building


def find_weights(base_model: str, weights_path: str | os.PathLike | None = None) -> Path:
    """The local ImageNet weights file for ``base_model``, or ModelError saying where to put it."""
    name = WEIGHT_FILES[base_model]
    if weights_path is not None:
        candidates = [Path(weights_path)]
    else:
        candidates = [Path(torch.hub.get_dir()) / "checkpoints" / name]
        if os.environ.get("AUTOLABEL_WEIGHTS"):
            candidates.insert(0, Path(os.environ["AUTOLABEL_WEIGHTS"]) / name)
    for path in candidates:
        if path.is_file():
            return path
    where = " or ".join(str(p) for p in candidates)
    raise ModelError(
        f"pretrained: ImageNet weights for {base_model} not found; put torchvision's {name} at {where} "
        f"(the trainer never downloads them), or set pretrained: false"
    )


def adapt_first_conv(rgb_kernel: torch.Tensor, feature_count: int) -> torch.Tensor:
    """An input-count kernel from an RGB one: the RGB mean on every input, scaled by 3/feature_count.

    Our inputs are not colours, so no channel deserves a particular RGB slice; the
    mean keeps the pretrained edge/blob detectors and the 3/feature_count scale keeps
    the response to a uniform input the same as the RGB kernel's.
    """
    mean = rgb_kernel.mean(dim=1, keepdim=True)
    return mean.repeat(1, feature_count, 1, 1) * (3.0 / feature_count)


def build_model(
    base_model: str,
    feature_count: int,
    segment_count: int,
    pretrained: bool = False,
    weights_path: str | os.PathLike | None = None,
) -> UNet:
    """The U-Net for ``feature_count`` inputs and ``segment_count`` logits; weights from the torch RNG."""
    if base_model not in WEIGHT_FILES:
        raise ModelError(f"base_model: unknown {base_model!r}; use one of {', '.join(BASE_MODELS)}")
    if feature_count < 1 or segment_count < 1:
        raise ModelError(f"feature_count and segment_count must be >= 1, got {feature_count}, {segment_count}")
    resnet = getattr(torchvision.models, base_model)(weights=None)
    if pretrained:
        state = torch.load(find_weights(base_model, weights_path), map_location="cpu", weights_only=True)
        resnet.load_state_dict(state)
    rgb_kernel = resnet.conv1.weight.detach()
    # As in ResNet: 7x7, stride 2, padding 3, no bias; only the input count changes.
    resnet.conv1 = nn.Conv2d(feature_count, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if pretrained:
        with torch.no_grad():
            resnet.conv1.weight.copy_(adapt_first_conv(rgb_kernel, feature_count))
    return UNet(resnet, feature_count, segment_count)


def count_parameters(model: nn.Module) -> int:
    """Weights plus BatchNorm running statistics, excluding num_batches_tracked.

    Counted this way the published models have 17,850,371 (ResNet-18) and 27,965,955
    (ResNet-34) with 14 inputs and 3 outputs (Benson, Song et al. 2025).
    """
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for n, b in model.named_buffers() if not n.endswith("num_batches_tracked"))
    return params + buffers
