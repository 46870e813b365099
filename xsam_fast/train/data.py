"""Datasets for the training job, as iterables of ``(inputs, targets)`` batches on the device.

``digits`` (the default) is scikit-learn's bundled copy of the UCI handwritten
digits: 1797 grey 8x8 images, 10 classes, no download. It is split once into
train and test sets by ``split_seed`` (stratified; ``test_size`` of the images
are held out), the same split for every method and training seed, and
standardised with the mean and standard deviation of the training pixels.
``label_noise`` makes that fraction of the training labels wrong (symmetric
noise, :mod:`.noise`, fixed by ``split_seed``); the test labels stay clean.

``cifar10`` / ``cifar100`` are read from the python-version pickles under
``data_dir`` (:mod:`.cifar`; ``download=True`` fetches them) and kept on the
device as uint8; each training batch is augmented and normalised there
(:mod:`.augment`).

Every set lives in two tensors per split; batches are sliced from a permutation
drawn from the run's generator, so a seed fixes the order (and augmentation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

import torch
from torch import Tensor

from . import cifar
from .augment import ImageTransform, device_generator
from .errors import DatasetUnavailable
from .noise import symmetric_label_noise

DATASETS = ("digits", "cifar10", "cifar100")
TEST_BATCH = 500

Batch = tuple[Tensor, Tensor]
Transform = Callable[[Tensor, "torch.Generator | None"], Tensor]

__all__ = ["DATASETS", "Batches", "Dataset", "DatasetUnavailable", "TensorBatches", "load_dataset"]


class Batches(Protocol):
    def epoch(self, generator: torch.Generator | None) -> Iterator[Batch]: ...

    def __len__(self) -> int: ...


@dataclass
class Dataset:
    """A train and a test split, with what the model needs to know about them.

    ``info``: facts for the log (noise rate, where the data came from, ...).
    """

    name: str
    train: TensorBatches
    test: TensorBatches
    in_channels: int
    num_classes: int
    n_train: int
    n_test: int
    info: dict[str, Any] = field(default_factory=dict)


class TensorBatches:
    """Mini-batches sliced from tensors on one device (shuffled with ``shuffle=True``).

    ``transform(inputs, generator)`` turns each sliced batch into the model's
    input (augmentation, normalisation); without it the slice is the input.
    """

    def __init__(
        self,
        inputs: Tensor,
        targets: Tensor,
        batch_size: int,
        shuffle: bool,
        transform: Transform | None = None,
    ) -> None:
        self.inputs, self.targets = inputs, targets
        self.batch_size, self.shuffle, self.transform = batch_size, shuffle, transform

    def __len__(self) -> int:
        return -(-len(self.targets) // self.batch_size)

    def epoch(self, generator: torch.Generator | None = None) -> Iterator[Batch]:
        n = len(self.targets)
        device = self.targets.device
        order = torch.randperm(n, generator=generator).to(device) if self.shuffle else None
        augment_rng = (
            device_generator(device, generator)
            if self.transform is not None and generator is not None
            else None
        )
        for start in range(0, n, self.batch_size):
            if order is None:
                x = self.inputs[start : start + self.batch_size]
                y = self.targets[start : start + self.batch_size]
            else:
                idx = order[start : start + self.batch_size]
                x, y = self.inputs[idx], self.targets[idx]
            yield (x if self.transform is None else self.transform(x, augment_rng)), y


def load_dataset(
    name: str,
    *,
    batch_size: int,
    split_seed: int = 0,
    data_dir: str = "data",
    download: bool = False,
    test_size: float = 0.2,
    label_noise: float = 0.0,
    device: torch.device | str = "cpu",
    cutout: int = 0,
    channels_last: bool = False,
) -> Dataset:
    """The dataset ``name`` (one of :data:`DATASETS`) as batch iterables on ``device``.

    ``test_size``: the held-out fraction of digits (CIFAR has its own test set).
    ``label_noise``: fraction of training labels made wrong (any dataset).
    ``cutout``: Cutout square side for CIFAR training batches (0: none).
    Raises :class:`DatasetUnavailable` with instructions when the data cannot be used.
    """
    device = torch.device(device)
    if name == "digits":
        data = _digits(batch_size, split_seed, test_size, device)
    elif name in cifar.SPECS:
        data = _cifar(
            cifar.SPECS[name], batch_size, data_dir, download, device, cutout, channels_last
        )
    else:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    if label_noise > 0:
        train = data.train
        train.targets, changed = symmetric_label_noise(
            train.targets, label_noise, data.num_classes, seed=split_seed
        )
        data.info["noisy_labels"] = int(changed.sum())
    data.info["label_noise"] = label_noise
    return data


def _digits(batch_size: int, split_seed: int, test_size: float, device: torch.device) -> Dataset:
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:
        raise DatasetUnavailable(
            "the digits dataset comes with scikit-learn, which is not installed: "
            'pip install scikit-learn (or pip install "xsam-fast[train]")'
        ) from exc
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.images,
        digits.target,
        test_size=test_size,
        random_state=split_seed,
        stratify=digits.target,
    )
    mean, std = x_train.mean(), x_train.std()

    def to_tensors(x: Any, y: Any) -> tuple[Tensor, Tensor]:
        images = torch.as_tensor((x - mean) / std, dtype=torch.float32).unsqueeze(1)  # N,1,8,8
        return images.contiguous().to(device), torch.as_tensor(y, dtype=torch.long).to(device)

    train = TensorBatches(*to_tensors(x_train, y_train), batch_size, shuffle=True)
    test = TensorBatches(*to_tensors(x_test, y_test), TEST_BATCH, shuffle=False)
    return Dataset(
        "digits",
        train,
        test,
        in_channels=1,
        num_classes=10,
        n_train=len(y_train),
        n_test=len(y_test),
        info=dict(test_size=test_size),
    )


def _cifar(
    spec: cifar.CifarSpec,
    batch_size: int,
    data_dir: str,
    download: bool,
    device: torch.device,
    cutout: int,
    channels_last: bool,
) -> Dataset:
    path = cifar.find(spec, data_dir)
    if path is None:
        if not download:
            raise DatasetUnavailable(cifar.missing_message(spec, data_dir))
        path = cifar.download(spec, data_dir)
    x_train, y_train = cifar.load_split(path, spec.train_files, spec.num_classes)
    x_test, y_test = cifar.load_split(path, spec.test_files, spec.num_classes)
    augment = ImageTransform(
        spec.mean, spec.std, augment=True, cutout=cutout, channels_last=channels_last
    )
    plain = ImageTransform(spec.mean, spec.std, channels_last=channels_last)
    train = TensorBatches(x_train.to(device), y_train.to(device), batch_size, True, augment)
    test = TensorBatches(x_test.to(device), y_test.to(device), TEST_BATCH, False, plain)
    return Dataset(
        spec.name,
        train,
        test,
        in_channels=3,
        num_classes=spec.num_classes,
        n_train=len(y_train),
        n_test=len(y_test),
        info=dict(data_path=path, augmentation=f"crop 32 pad 4, flip, cutout {cutout}"),
    )
