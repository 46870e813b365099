"""Named settings of ``xsam-fast train --preset NAME``: the XSAM paper's CIFAR recipe.

The values follow the authors' ``train.py`` and data pipeline (repository
Cccjl219/XSAM): ResNet-18 with the 3x3 stem and no max-pool, 200 epochs,
SGD with momentum 0.9, learning rate 0.05 on a cosine schedule stepped per
epoch, weight decay 1e-3, batch 125, rho 0.15 (one ascent step), rho_max 0.3,
alpha searched once per epoch on the grid 0..2 step 0.1; augmentation random
crop 32 with padding 4, horizontal flip, normalisation and Cutout 16 (with
probability 0.5, as their ``utils/cutout.py``). Flags given on the command line
override a preset's values.
"""

from __future__ import annotations

from typing import Any

_PAPER: dict[str, Any] = dict(
    model="resnet18",
    width=64,
    epochs=200,
    bs=125,
    lr=0.05,
    momentum=0.9,
    wd=1e-3,
    rho=0.15,
    rho_max=0.30,
    steps=1,
    is_dynamic=True,
    alpha_max=2.0,
    alpha_delta=0.1,
    cutout=16,
    label_noise=0.0,
    seeds=1,
    device="auto",
)

PRESETS: dict[str, dict[str, Any]] = {
    "cifar10-paper": dict(_PAPER, dataset="cifar10"),
    "cifar100-paper": dict(_PAPER, dataset="cifar100"),
}
