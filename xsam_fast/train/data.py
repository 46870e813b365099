"""Datasets for the training job, as iterables of ``(inputs, targets)`` batches.

``digits`` (the default) is scikit-learn's bundled copy of the UCI handwritten
digits: 1797 grey 8x8 images, 10 classes, no download. It is split once into
train and test sets by ``split_seed`` (stratified), the same split for every
method and training seed, and standardised with the mean and standard deviation
of the training pixels. The whole set lives in two tensors; batches are sliced
from a permutation drawn from the run's generator, so a seed fixes the order.

``cifar10`` / ``cifar100`` need torchvision and the data under ``data_dir``
(nothing is downloaded unless asked with ``download=True``); they get the usual
random crop + flip augmentation and per-channel normalisation.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Protocol

import torch
from torch import Tensor

DATASETS = ("digits", "cifar10", "cifar100")

Batch = tuple[Tensor, Tensor]


class DatasetUnavailable(RuntimeError):
    """The dataset cannot be used here; the message says how to get it."""


class Batches(Protocol):
    def epoch(self, generator: torch.Generator | None) -> Iterator[Batch]: ...

    def __len__(self) -> int: ...


@dataclass
class Dataset:
    """A train and a test split, with what the model needs to know about them."""

    name: str
    train: Batches
    test: Batches
    in_channels: int
    num_classes: int
    n_train: int
    n_test: int


class TensorBatches:
    """Mini-batches sliced from in-memory tensors (shuffled with ``shuffle=True``)."""

    def __init__(self, inputs: Tensor, targets: Tensor, batch_size: int, shuffle: bool) -> None:
        self.inputs, self.targets = inputs, targets
        self.batch_size, self.shuffle = batch_size, shuffle

    def __len__(self) -> int:
        return -(-len(self.targets) // self.batch_size)

    def epoch(self, generator: torch.Generator | None = None) -> Iterator[Batch]:
        n = len(self.targets)
        order = torch.randperm(n, generator=generator) if self.shuffle else None
        for start in range(0, n, self.batch_size):
            if order is None:
                yield self.inputs[start:start + self.batch_size], self.targets[start:start + self.batch_size]
            else:
                idx = order[start:start + self.batch_size]
                yield self.inputs[idx], self.targets[idx]


class LoaderBatches:
    """A ``torch.utils.data.DataLoader`` whose shuffling follows the run's generator."""

    def __init__(self, dataset, batch_size: int, shuffle: bool, num_workers: int) -> None:
        self.dataset, self.batch_size = dataset, batch_size
        self.shuffle, self.num_workers = shuffle, num_workers

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def epoch(self, generator: torch.Generator | None = None) -> Iterator[Batch]:
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=self.batch_size,
                                             shuffle=self.shuffle, generator=generator,
                                             num_workers=self.num_workers)
        yield from loader


def load_dataset(name: str, *, batch_size: int, split_seed: int = 0, data_dir: str = "data",
                 download: bool = False, num_workers: int = 0, test_size: float = 0.2) -> Dataset:
    """The dataset ``name`` (one of :data:`DATASETS`) as batch iterables.

    Raises :class:`DatasetUnavailable` with instructions when a CIFAR set cannot
    be used (no torchvision, or no data under ``data_dir`` without ``download``).
    """
    if name == "digits":
        return _digits(batch_size, split_seed, test_size)
    if name in ("cifar10", "cifar100"):
        return _cifar(name, batch_size, data_dir, download, num_workers)
    raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")


def _digits(batch_size: int, split_seed: int, test_size: float) -> Dataset:
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:
        raise DatasetUnavailable(
            "the digits dataset comes with scikit-learn, which is not installed: "
            'pip install scikit-learn (or pip install "xsam-fast[train]")') from exc
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.images, digits.target, test_size=test_size, random_state=split_seed,
        stratify=digits.target)
    mean, std = x_train.mean(), x_train.std()

    def to_tensors(x, y) -> tuple[Tensor, Tensor]:
        images = torch.as_tensor((x - mean) / std, dtype=torch.float32).unsqueeze(1)  # N,1,8,8
        return images.contiguous(), torch.as_tensor(y, dtype=torch.long)

    train = TensorBatches(*to_tensors(x_train, y_train), batch_size, shuffle=True)
    test = TensorBatches(*to_tensors(x_test, y_test), 512, shuffle=False)
    return Dataset("digits", train, test, in_channels=1, num_classes=10,
                   n_train=len(y_train), n_test=len(y_test))


#: folder that torchvision's CIFAR classes expect under ``root``, and the archive
_CIFAR = {
    "cifar10": ("cifar-10-batches-py", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                "CIFAR10", 10, ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))),
    "cifar100": ("cifar-100-python", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                 "CIFAR100", 100, ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))),
}


def _cifar(name: str, batch_size: int, data_dir: str, download: bool, num_workers: int) -> Dataset:
    folder, url, cls_name, num_classes, (mean, std) = _CIFAR[name]
    try:
        import torchvision
        from torchvision import transforms
    except ImportError as exc:
        raise DatasetUnavailable(
            f"--dataset {name} needs torchvision, which is not installed here: "
            f"pip install torchvision (the build matching your torch), then put the data under "
            f"{data_dir}/ (see --data_dir) or pass --download") from exc
    path = os.path.join(data_dir, folder)
    if not download and not os.path.isdir(path):
        raise DatasetUnavailable(
            f"--dataset {name}: no data at {path}. Either pass --download (fetches {url} "
            f"into {data_dir}/ once), or download that archive yourself and extract it "
            f"there: mkdir -p {data_dir} && tar -xzf {os.path.basename(url)} -C {data_dir}")
    normalize = transforms.Normalize(mean, std)
    train_tf = transforms.Compose([transforms.RandomCrop(32, padding=4),
                                   transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), normalize])
    test_tf = transforms.Compose([transforms.ToTensor(), normalize])
    cls = getattr(torchvision.datasets, cls_name)
    try:
        train_set = cls(root=data_dir, train=True, transform=train_tf, download=download)
        test_set = cls(root=data_dir, train=False, transform=test_tf, download=download)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        raise DatasetUnavailable(f"--dataset {name}: {exc} (looked in {path}; "
                                 f"re-extract {url} there or pass --download)") from exc
    return Dataset(name, LoaderBatches(train_set, batch_size, True, num_workers),
                   LoaderBatches(test_set, 512, False, num_workers),
                   in_channels=3, num_classes=num_classes,
                   n_train=len(train_set), n_test=len(test_set))
