"""Image batches prepared on the training device: augmentation and normalisation in torch.

:class:`ImageTransform` turns a uint8 batch (B, C, H, W) into the float32
batch the model sees: optionally a random crop with zero padding, a random
horizontal flip and Cutout (the authors' CIFAR pipeline: crop with padding 4,
flip, normalise, then Cutout of a 16x16 square with probability 0.5), then
per-channel normalisation, optionally in channels-last memory format. The random
draws (a few numbers per image) come from the run's CPU generator, so a seed
gives the same augmentation on every device; the pixel work runs where the
batch is.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class ImageTransform:
    """uint8 (B, C, H, W) -> normalised float32 (B, C, H, W), augmented when ``augment``.

    ``mean``/``std``: per channel, for pixels scaled to [0, 1]. ``crop_padding``:
    zero padding of the random crop (0: no crop); ``flip``: random horizontal
    flip with probability 1/2; ``cutout``: side of the square set to 0 after
    normalisation, with probability ``cutout_p`` (0: none).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool = False
    crop_padding: int = 4
    flip: bool = True
    cutout: int = 0
    cutout_p: float = 0.5
    channels_last: bool = False

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x = images
        if self.augment and self.crop_padding > 0:
            x = random_crop(x, self.crop_padding, generator)
        if self.augment and self.flip:
            x = random_flip(x, generator)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        x = (x.float() / 255.0 - mean) / std
        if self.augment and self.cutout > 0:
            x = cutout(x, self.cutout, self.cutout_p, generator)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def _draw(high: int, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """``n`` integers uniform in [0, high), drawn on the CPU, returned on ``device``."""
    return torch.randint(0, high, (n,), generator=generator).to(device)


def random_crop(images: Tensor, padding: int, generator: torch.Generator | None = None) -> Tensor:
    """Each image shifted by up to ``padding`` pixels each way, zeros shifted in
    (a crop of the zero-padded image at a uniformly drawn offset)."""
    b, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    dy = _draw(2 * padding + 1, b, generator, images.device)
    dx = _draw(2 * padding + 1, b, generator, images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]  # B,1,H,1
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]  # B,1,1,W
    batch = torch.arange(b, device=images.device)[:, None, None, None]
    channel = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def random_flip(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Each image mirrored left-right with probability 1/2."""
    flip = _draw(2, len(images), generator, images.device).bool()[:, None, None, None]
    return torch.where(flip, images.flip(3), images)


def cutout(images: Tensor, size: int, p: float, generator: torch.Generator | None = None) -> Tensor:
    """With probability ``p`` per image, zero the ``size`` x ``size`` square centred on a
    uniformly drawn pixel (clipped at the border), as the authors' Cutout does."""
    b, _, h, w = images.shape
    apply = (torch.rand(b, generator=generator) < p).to(images.device)
    cy, cx = _draw(h, b, generator, images.device), _draw(w, b, generator, images.device)
    ys = torch.arange(h, device=images.device)[None, :]
    xs = torch.arange(w, device=images.device)[None, :]
    in_y = (ys >= cy[:, None] - size // 2) & (ys < cy[:, None] + size // 2)  # B,H
    in_x = (xs >= cx[:, None] - size // 2) & (xs < cx[:, None] + size // 2)  # B,W
    hole = (in_y[:, :, None] & in_x[:, None, :] & apply[:, None, None])[:, None]  # B,1,H,W
    return images.masked_fill(hole, 0.0)
