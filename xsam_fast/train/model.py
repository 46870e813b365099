"""The models of the training job, by name: the small CNN and ResNet-18.

``smallcnn``: three 3x3 conv + BatchNorm + ReLU blocks (max-pool after the
second), global average pooling and a linear classifier; any input size.
BatchNorm is there on purpose: XSAM's extra forward passes (ascent, final
gradient, alpha search) must not move its running statistics, so the job
exercises that rule. ``resnet18``: :class:`~.resnet.ResNet18`, the authors'
CIFAR network.
"""

from __future__ import annotations

from torch import Tensor, nn

from .resnet import ResNet18

#: model name -> default width (channels of the first layer)
MODELS = {"smallcnn": 32, "resnet18": 64}


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class SmallCNN(nn.Module):
    """conv(w) - conv(w) - maxpool - conv(2w) - avgpool - linear; 8x8 digits: ~25k params
    at w=32."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_block(in_channels, width),
            *_block(width, width),
            nn.MaxPool2d(2),
            *_block(width, 2 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def build_model(
    name: str, in_channels: int, num_classes: int, width: int | None = None
) -> nn.Module:
    """The model ``name`` (a key of :data:`MODELS`); ``width`` None means its default."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")
    width = MODELS[name] if width is None else width
    cls = SmallCNN if name == "smallcnn" else ResNet18
    return cls(in_channels, num_classes, width)
