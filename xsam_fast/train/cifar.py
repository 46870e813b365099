"""CIFAR-10 / CIFAR-100 read straight from the "python version" pickles (no torchvision).

On disk (as extracted from the archives of https://www.cs.toronto.edu/~kriz/cifar.html):
``cifar-10-batches-py/data_batch_1..5`` and ``test_batch``;
``cifar-100-python/train`` and ``test``. Each file is a pickled dict (keys str
or bytes) whose ``data`` is an N x 3072 uint8 array (1024 red, then 1024 green,
then 1024 blue values, each a row-major 32x32 image) and whose labels are under
``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100).

The folder is looked for in ``data_dir`` and in ``data_dir/<name>`` (the
authors' ``data/cifar10`` layout). :func:`download` fetches and checks the
archive with the standard library only.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import urllib.request
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import DatasetUnavailable

PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"


@dataclass(frozen=True)
class CifarSpec:
    """Where a CIFAR set lives on disk and how to get it."""

    name: str
    title: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    num_classes: int
    archive: str
    md5: str
    #: per-channel mean and std of the training images (scaled to [0, 1]), as the authors use
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def url(self) -> str:
        return "https://www.cs.toronto.edu/~kriz/" + self.archive


SPECS = {
    "cifar10": CifarSpec(
        "cifar10",
        "CIFAR-10",
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        10,
        "cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        (0.49140082, 0.48215898, 0.44653094),
        (0.24703225, 0.24348514, 0.26158785),
    ),
    "cifar100": CifarSpec(
        "cifar100",
        "CIFAR-100",
        "cifar-100-python",
        ("train",),
        ("test",),
        100,
        "cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        (0.50707578, 0.48655031, 0.44091914),
        (0.26733428, 0.25643846, 0.27615047),
    ),
}

LABEL_KEYS = ("labels", "fine_labels")


def find(spec: CifarSpec, data_dir: str) -> str | None:
    """The folder holding ``spec``'s files under ``data_dir``, or None."""
    for root in (data_dir, os.path.join(data_dir, spec.name)):
        path = os.path.join(root, spec.folder)
        if all(os.path.isfile(os.path.join(path, f)) for f in spec.train_files + spec.test_files):
            return path
    return None


def missing_message(spec: CifarSpec, data_dir: str) -> str:
    """What to do when ``spec``'s files are not under ``data_dir``."""
    files = ", ".join(spec.train_files + spec.test_files)
    return (
        f"no {spec.title} data under {data_dir}: expected {os.path.join(data_dir, spec.folder)}/ "
        f"holding {files}. Download the 'CIFAR python version' archive {spec.archive} "
        f"({spec.url}, listed on {PAGE}) and extract it there: "
        f"mkdir -p {data_dir} && tar -xzf {spec.archive} -C {data_dir}; or pass --download "
        f"to let this command fetch it (needs internet), or --data_dir to point elsewhere"
    )


def load_split(path: str, files: tuple[str, ...], num_classes: int) -> tuple[Tensor, Tensor]:
    """``(images uint8 (N, 3, 32, 32), labels int64 (N,))`` from the pickles ``files`` in
    ``path``."""
    images, labels = [], []
    for name in files:
        file = os.path.join(path, name)
        x, y = _read_batch(file)
        if x.ndim != 2 or x.shape[1] != 3072 or len(y) != len(x):
            raise DatasetUnavailable(
                f"{file}: 'data' has shape {tuple(x.shape)} and {len(y)} labels; expected "
                f"N x 3072 uint8 and N labels (is it a CIFAR python-version file?)"
            )
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise DatasetUnavailable(f"{file}: labels outside 0..{num_classes - 1}")
        images.append(x.reshape(-1, 3, 32, 32))
        labels.append(y)
    return torch.cat(images), torch.cat(labels)


def _read_batch(file: str) -> tuple[Tensor, Tensor]:
    try:
        with open(file, "rb") as f:
            raw: dict[Any, Any] = pickle.load(f, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DatasetUnavailable(f"{file}: cannot be read as a CIFAR pickle ({exc})") from exc
    batch = {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}
    key = next((k for k in LABEL_KEYS if k in batch), None)
    if "data" not in batch or key is None:
        raise DatasetUnavailable(
            f"{file}: no 'data' and 'labels'/'fine_labels' entries "
            f"(keys: {sorted(map(str, batch))})"
        )
    x = torch.from_numpy(np.ascontiguousarray(batch["data"], dtype=np.uint8))
    y = torch.as_tensor(np.asarray(batch[key], dtype=np.int64))
    return x, y


def download(spec: CifarSpec, data_dir: str, url: str | None = None) -> str:
    """Fetch ``spec``'s archive into ``data_dir``, check its MD5, extract it; the data folder.

    ``url`` replaces the official address (a mirror, or a ``file://`` path).
    """
    os.makedirs(data_dir, exist_ok=True)
    archive = os.path.join(data_dir, spec.archive)
    if not os.path.isfile(archive) or _md5(archive) != spec.md5:
        source = url or spec.url
        print(f"downloading {source} to {archive} ...", flush=True)
        partial = archive + ".part"
        try:
            urllib.request.urlretrieve(source, partial)
        except OSError as exc:
            raise DatasetUnavailable(
                f"download of {source} failed ({exc}); " + missing_message(spec, data_dir)
            ) from exc
        digest = _md5(partial)
        if digest != spec.md5:
            os.remove(partial)
            raise DatasetUnavailable(
                f"{source}: MD5 {digest}, expected {spec.md5} "
                f"(incomplete or altered download; nothing kept)"
            )
        os.replace(partial, archive)
    with tarfile.open(archive, "r:gz") as tar:
        members = [m for m in tar.getmembers() if _safe_member(m, spec.folder)]
        tar.extractall(data_dir, members=members)
    path = find(spec, data_dir)
    if path is None:
        raise DatasetUnavailable(
            f"{archive} did not hold the expected files; " + missing_message(spec, data_dir)
        )
    return path


def _safe_member(member: tarfile.TarInfo, folder: str) -> bool:
    """Regular files and folders inside ``folder`` only (no links, no absolute or .. paths)."""
    name = os.path.normpath(member.name)
    inside = name == folder or name.startswith(folder + os.sep)
    return (
        inside
        and not os.path.isabs(name)
        and ".." not in name.split(os.sep)
        and (member.isfile() or member.isdir())
    )


def _md5(path: str) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
