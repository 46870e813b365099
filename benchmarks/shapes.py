"""The parameter sets the benchmarks step: named shape lists, dtype names, seeded tensors.

A *size* is a list of parameter shapes in model order (``SIZES``); a *dtype name*
is the spelling the reports use (``DTYPES``: fp64/fp32/bf16/fp16).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

Shape = tuple[int, ...]

#: ResNet-18 for CIFAR-10 (3x3 stem, no max-pool, 10 classes), as the authors
#: train it: 62 parameter tensors, 11,173,962 parameters, in model order.
RESNET18_SHAPES: list[Shape] = [
    (64, 3, 3, 3),
    (64,),
    (64,),  # conv1, bn1
    # layer1: two blocks of conv-bn-conv-bn, 64 channels
    (64, 64, 3, 3),
    (64,),
    (64,),
    (64, 64, 3, 3),
    (64,),
    (64,),
    (64, 64, 3, 3),
    (64,),
    (64,),
    (64, 64, 3, 3),
    (64,),
    (64,),
    # layer2: 128 channels, stride 2, 1x1 conv + bn shortcut in the first block
    (128, 64, 3, 3),
    (128,),
    (128,),
    (128, 128, 3, 3),
    (128,),
    (128,),
    (128, 64, 1, 1),
    (128,),
    (128,),
    (128, 128, 3, 3),
    (128,),
    (128,),
    (128, 128, 3, 3),
    (128,),
    (128,),
    # layer3: 256 channels
    (256, 128, 3, 3),
    (256,),
    (256,),
    (256, 256, 3, 3),
    (256,),
    (256,),
    (256, 128, 1, 1),
    (256,),
    (256,),
    (256, 256, 3, 3),
    (256,),
    (256,),
    (256, 256, 3, 3),
    (256,),
    (256,),
    # layer4: 512 channels
    (512, 256, 3, 3),
    (512,),
    (512,),
    (512, 512, 3, 3),
    (512,),
    (512,),
    (512, 256, 1, 1),
    (512,),
    (512,),
    (512, 512, 3, 3),
    (512,),
    (512,),
    (512, 512, 3, 3),
    (512,),
    (512,),
    (10, 512),
    (10,),  # linear
]

#: a handful of small shapes (odd lengths included) for smoke tests
TINY_SHAPES: list[Shape] = [(33,), (7, 5), (16, 3, 3, 3), (1000,), (130, 17)]


def transformer_shapes(vocab: int, context: int, width: int, layers: int) -> list[Shape]:
    """Parameter shapes of a GPT-2-like decoder (tied embeddings, biases, 4x MLP)."""
    d = width
    shapes: list[Shape] = [(vocab, d), (context, d)]
    for _ in range(layers):
        shapes += [
            (d,),
            (d,),  # ln_1
            (3 * d, d),
            (3 * d,),  # fused q, k, v
            (d, d),
            (d,),  # attention output
            (d,),
            (d,),  # ln_2
            (4 * d, d),
            (4 * d,),  # MLP in
            (d, 4 * d),
            (d,),
        ]  # MLP out
    return shapes + [(d,), (d,)]  # final layer norm


def uniform_shapes(count: int, numel: int) -> list[Shape]:
    """``count`` 1-d tensors of ``numel`` elements each (the host-overhead sets)."""
    return [(numel,)] * count


SIZES: dict[str, Callable[[], list[Shape]]] = {
    "tiny": lambda: list(TINY_SHAPES),
    "resnet18": lambda: list(RESNET18_SHAPES),
    "100M": lambda: transformer_shapes(50257, 1024, 768, 9),  # 103.2M parameters
    "125M": lambda: transformer_shapes(50257, 1024, 768, 12),  # GPT-2 small, 124.4M
    "1B": lambda: transformer_shapes(50304, 2048, 2048, 18),  # 1.01B
}

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp64": torch.float64,
}


def numel(shapes: Sequence[Shape]) -> int:
    """Elements in all of ``shapes``."""
    return sum(math.prod(s) for s in shapes)


def element_size(dtype: torch.dtype) -> int:
    """Bytes per element of ``dtype``."""
    return torch.empty((), dtype=dtype).element_size()


def parse_names(text: str | None, choices: dict[str, object], default: str, what: str) -> list[str]:
    """A comma list of keys of ``choices`` (``default`` when ``text`` is None); exits naming
    the valid keys on an unknown one."""
    names = [n.strip() for n in (text if text is not None else default).split(",") if n.strip()]
    for n in names:
        if n not in choices:
            raise SystemExit(f"unknown {what} {n!r}; choose from {', '.join(choices)}")
    return names


Tensors3 = tuple[list[Tensor], list[Tensor], list[Tensor]]


def make_tensors(
    shapes: Sequence[Shape], dtype: torch.dtype, device: torch.device, seed: int
) -> Tensors3:
    """Initial parameters (std 0.05), first and second gradients (std 1e-3) of ``shapes``,
    reproducible from ``seed``, generated on ``device``."""
    gen = torch.Generator(device=device).manual_seed(seed)

    def one(shape: Shape, std: float) -> Tensor:
        return torch.randn(shape, generator=gen, device=device).mul_(std).to(dtype)

    params = [one(s, 0.05) for s in shapes]
    g1 = [one(s, 1e-3) for s in shapes]
    g2 = [one(s, 1e-3) for s in shapes]
    return params, g1, g2
