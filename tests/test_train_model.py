"""The job's models: ResNet-18 as the authors build it for CIFAR, and the small CNN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xsam_fast.train.model import MODELS, SmallCNN, build_model
from xsam_fast.train.resnet import ResNet18


@pytest.mark.parametrize(
    "classes,params", [(10, 11_173_962), (100, 11_220_132)], ids=["cifar10", "cifar100"]
)
def test_resnet18_has_the_standard_cifar_size(classes, params):
    model = build_model("resnet18", 3, classes)
    assert sum(p.numel() for p in model.parameters()) == params
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, classes)


def test_resnet18_stem_is_3x3_stride_1_without_max_pool():
    model = ResNet18()
    assert (model.conv1.kernel_size, model.conv1.stride) == ((3, 3), (1, 1))
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 16 + 3  # stem, 8 blocks x 2, 3 projection shortcuts
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == len(convs)


def test_build_model_defaults_and_width():
    assert isinstance(build_model("smallcnn", 1, 10), SmallCNN)
    assert build_model("smallcnn", 1, 10).classifier.in_features == 2 * MODELS["smallcnn"]
    assert build_model("resnet18", 3, 10, width=8).linear.in_features == 64
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg", 3, 10)
