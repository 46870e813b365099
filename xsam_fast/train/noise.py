"""Symmetric label noise: a fixed fraction of the training labels replaced by wrong ones.

The standard stress test of robustness to noisy labels: exactly
``round(rate * n)`` labels, chosen uniformly without replacement, each get a
class drawn uniformly from the ``num_classes - 1`` other classes. The test
labels are never touched.
"""

from __future__ import annotations

import torch
from torch import Tensor


def symmetric_label_noise(
    labels: Tensor, rate: float, num_classes: int, seed: int
) -> tuple[Tensor, Tensor]:
    """``(noisy labels, mask of the changed ones)`` for int64 ``labels`` of shape (N,).

    ``rate`` in [0, 1): the fraction of labels made wrong; ``seed`` fixes which
    and to what (a CPU generator, so the noise is the same on every machine).
    ``labels`` itself is not modified.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"label noise rate must be in [0, 1), got {rate}")
    if num_classes < 2 and rate > 0:
        raise ValueError("label noise needs at least 2 classes")
    n = len(labels)
    generator = torch.Generator().manual_seed(seed)
    changed = torch.zeros(n, dtype=torch.bool)
    changed[torch.randperm(n, generator=generator)[: round(rate * n)]] = True
    # a shift of 1..C-1 classes: uniform over the other classes
    shift = torch.randint(1, max(num_classes, 2), (n,), generator=generator)
    noisy = torch.where(changed, (labels.cpu() + shift) % num_classes, labels.cpu())
    return noisy.to(labels.device), changed.to(labels.device)
