"""Image batches prepared on the training device: augmentation and normalisation in torch.

:class:`ImageTransform` turns a uint8 batch (B, C, H, W) into the float32
batch the model sees: optionally a random crop with zero padding, a random
horizontal flip and Cutout (the authors' CIFAR pipeline: crop with padding 4,
flip, normalise, then Cutout of a 16x16 square with probability 0.5), then
per-channel normalisation, optionally in channels-last memory format. The random
draws (a few numbers per image) come from a generator on the batch's device
(:func:`device_generator`, seeded from the run's CPU generator), so nothing is
copied between host and device per batch; a seed fixes the augmentation on a
given device type.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    _constants_by_device: dict[torch.device, tuple[Tensor, Tensor]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x = images
        if self.augment and self.crop_padding > 0:
            x = random_crop(x, self.crop_padding, generator)
        if self.augment and self.flip:
            x = random_flip(x, generator)
        mean, std = self._constants(x.device)
        x = (x.float() / 255.0 - mean) / std
        if self.augment and self.cutout > 0:
            x = cutout(x, self.cutout, self.cutout_p, generator)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _constants(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """mean and std as (1, C, 1, 1) tensors on ``device``, made once per device."""
        cache = self._constants_by_device
        if device not in cache:
            mean, std = (
                torch.tensor(v, device=device).view(1, -1, 1, 1) for v in (self.mean, self.std)
            )
            cache[device] = (mean, std)
        return cache[device]


def device_generator(device: torch.device, generator: torch.Generator | None) -> torch.Generator:
    """A generator on ``device`` seeded by one draw from ``generator`` (a CPU generator)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


def _draw(high: int, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """``n`` integers uniform in [0, high) on ``device`` (``generator`` lives there)."""
    return torch.randint(0, high, (n,), generator=generator, device=device)


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
    apply = torch.rand(b, generator=generator, device=images.device) < p
    cy, cx = _draw(h, b, generator, images.device), _draw(w, b, generator, images.device)
    ys = torch.arange(h, device=images.device)[None, :]
    xs = torch.arange(w, device=images.device)[None, :]
    in_y = (ys >= cy[:, None] - size // 2) & (ys < cy[:, None] + size // 2)  # B,H
    in_x = (xs >= cx[:, None] - size // 2) & (xs < cx[:, None] + size // 2)  # B,W
    hole = (in_y[:, :, None] & in_x[:, None, :] & apply[:, None, None])[:, None]  # B,1,H,W
    return images.masked_fill(hole, 0.0)
