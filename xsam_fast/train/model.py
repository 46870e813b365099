"""The small CNN of the training job.

Three 3x3 conv + BatchNorm + ReLU blocks (max-pool after the second), global
average pooling and a linear classifier; any input size. BatchNorm is there on
purpose: XSAM's extra forward passes (ascent, final gradient, alpha search)
must not move its running statistics, so the job exercises that rule.
"""
from __future__ import annotations

from torch import Tensor, nn


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """conv(w) - conv(w) - maxpool - conv(2w) - avgpool - linear; 8x8 digits: ~25k params at w=32."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_block(in_channels, width), *_block(width, width), nn.MaxPool2d(2),
            *_block(width, 2 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
