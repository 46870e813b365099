"""CIFAR without torchvision: the pickles read as the format says, the missing-data message,
the download (from a local archive), the paper preset, and end-to-end runs on tiny synthetic
sets written in the on-disk CIFAR-10 / CIFAR-100 formats (CPU, a few steps)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from xsam_fast.train import cifar
from xsam_fast.train.errors import DatasetUnavailable

pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from xsam_fast.cli import build_parser, main  # noqa: E402
from xsam_fast.train.log import read_log  # noqa: E402

N_TRAIN_FILE, N_TEST = 8, 12  # images per training file, test images


@pytest.fixture(autouse=True)
def _keep_threads():
    """The runs below use one thread (fastest on a busy machine); main() sets it process-wide."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _write(
    path: str, data: np.ndarray, labels: list[int], label_key: str, bytes_keys: bool
) -> None:
    batch = {"data": data, label_key: labels, "batch_label": "synthetic"}
    if bytes_keys:  # the official files were pickled by Python 2: bytes keys
        batch = {k.encode(): v for k, v in batch.items()}
    with open(path, "wb") as f:
        pickle.dump(batch, f)


def write_cifar(
    root: str, name: str = "cifar10", *, bytes_keys: bool = True, seed: int = 0
) -> dict[str, np.ndarray]:
    """A tiny data set in the layout of ``name``'s python-version archive under ``root``;
    returns everything written (``"<file>/data"``, ``"<file>/labels"``)."""
    spec = cifar.SPECS[name]
    folder = os.path.join(root, spec.folder)
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    key = "labels" if name == "cifar10" else "fine_labels"
    written = {}
    for file in spec.train_files + spec.test_files:
        n = N_TEST if file in spec.test_files else N_TRAIN_FILE * (5 // len(spec.train_files))
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, spec.num_classes, n)]
        _write(os.path.join(folder, file), data, labels, key, bytes_keys)
        written[f"{file}/data"], written[f"{file}/labels"] = data, np.array(labels)
    return written


@pytest.mark.parametrize("bytes_keys", [True, False], ids=["bytes-keys", "str-keys"])
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_pickles_are_read_as_the_format_says(tmp_path, name, bytes_keys):
    """Pixel (c, h, w) of image i is data[i, 1024 c + 32 h + w]; labels in file order."""
    written = write_cifar(str(tmp_path), name, bytes_keys=bytes_keys)
    spec = cifar.SPECS[name]
    path = cifar.find(spec, str(tmp_path))
    assert path == os.path.join(str(tmp_path), spec.folder)
    x, y = cifar.load_split(path, spec.train_files, spec.num_classes)
    data = np.concatenate([written[f"{f}/data"] for f in spec.train_files])
    labels = np.concatenate([written[f"{f}/labels"] for f in spec.train_files])
    assert x.dtype == torch.uint8 and x.shape == (len(data), 3, 32, 32)
    assert y.dtype == torch.int64 and y.tolist() == labels.tolist()
    i, c, h, w = len(data) - 1, 2, 5, 31
    assert int(x[i, c, h, w]) == int(data[i, 1024 * c + 32 * h + w])
    mismatch = (x.reshape(len(data), -1).numpy() != data).nonzero()
    assert mismatch[0].size == 0, f"first mismatch at {mismatch[0][0], mismatch[1][0]}"


def test_the_authors_folder_layout_is_found(tmp_path):
    write_cifar(str(tmp_path / "cifar10"))  # data/cifar10/cifar-10-batches-py, as train.py uses
    assert cifar.find(cifar.SPECS["cifar10"], str(tmp_path)) == os.path.join(
        str(tmp_path), "cifar10", "cifar-10-batches-py"
    )


def test_missing_data_says_where_to_put_it(tmp_path, capsys):
    data_dir = str(tmp_path / "data")
    rc = main(
        [
            "train",
            "--dataset",
            "cifar10",
            "--data_dir",
            data_dir,
            "--out",
            str(tmp_path / "out"),
            "--no_progress",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert os.path.join(data_dir, "cifar-10-batches-py") in err
    assert "data_batch_1" in err and "test_batch" in err
    assert "tar -xzf cifar-10-python.tar.gz" in err and "--download" in err
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_a_cifar_pickle_is_named(tmp_path):
    write_cifar(str(tmp_path))
    bad = tmp_path / "cifar-10-batches-py" / "test_batch"
    bad.write_bytes(pickle.dumps({b"data": np.zeros((3, 100), np.uint8), b"labels": [0, 1, 2]}))
    spec = cifar.SPECS["cifar10"]
    with pytest.raises(DatasetUnavailable, match="test_batch.*N x 3072"):
        cifar.load_split(str(bad.parent), spec.test_files, spec.num_classes)
    bad.write_bytes(b"not a pickle")
    with pytest.raises(DatasetUnavailable, match="cannot be read as a CIFAR pickle"):
        cifar.load_split(str(bad.parent), spec.test_files, spec.num_classes)


def _archive(tmp_path) -> tuple[str, str]:
    """A .tar.gz of a synthetic CIFAR-10 folder (plus a stray file outside it); (path, md5)."""
    src = tmp_path / "src"
    write_cifar(str(src))
    (src / "stray.txt").write_text("outside the data folder")
    archive = str(tmp_path / "cifar-10-python.tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(str(src / "cifar-10-batches-py"), arcname="cifar-10-batches-py")
        tar.add(str(src / "stray.txt"), arcname="stray.txt")
    with open(archive, "rb") as f:
        return archive, hashlib.md5(f.read(), usedforsecurity=False).hexdigest()


def test_download_checks_the_md5_and_extracts_the_data_folder_only(tmp_path):
    archive, md5 = _archive(tmp_path)
    spec = dataclasses.replace(cifar.SPECS["cifar10"], md5=md5)
    data_dir = str(tmp_path / "data")
    with contextlib.redirect_stdout(io.StringIO()):
        path = cifar.download(spec, data_dir, url="file://" + archive)
    assert path == os.path.join(data_dir, "cifar-10-batches-py")
    assert sorted(os.listdir(path)) == sorted(spec.train_files + spec.test_files)
    assert not os.path.exists(os.path.join(data_dir, "stray.txt"))


def test_download_with_a_wrong_md5_keeps_nothing(tmp_path):
    archive, _ = _archive(tmp_path)
    spec = cifar.SPECS["cifar10"]  # the real archive's MD5: the synthetic one cannot match
    data_dir = str(tmp_path / "data")
    with contextlib.redirect_stdout(io.StringIO()), pytest.raises(DatasetUnavailable, match="MD5"):
        cifar.download(spec, data_dir, url="file://" + archive)
    assert os.listdir(data_dir) == []


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_the_paper_preset(name):
    preset = f"{name}-paper"
    args = build_parser(preset).parse_args(["train", "--preset", preset])
    expected = dict(
        dataset=name,
        model="resnet18",
        width=64,
        epochs=200,
        lr=0.05,
        momentum=0.9,
        wd=1e-3,
        bs=125,
        rho=0.15,
        rho_max=0.3,
        steps=1,
        is_dynamic=True,
        alpha_max=2.0,
        alpha_delta=0.1,
        cutout=16,
        label_noise=0.0,
        seeds=1,
        device="auto",
        methods=["sgd", "sam", "xsam"],
        search="grid",
    )
    assert {k: getattr(args, k) for k in expected} == expected
    override = build_parser(preset).parse_args(
        ["train", "--preset", preset, "--epochs", "3", "--lr", "0.1"]
    )
    assert (override.epochs, override.lr, override.bs) == (3, 0.1, 125)


def _run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(argv)
    return rc, out.getvalue()


@pytest.mark.parametrize(
    "switches",
    [
        ["--amp", "bf16", "--channels_last", "--backend", "auto"],
        [
            "--amp",
            "fp16",
            "--methods",
            "xsam",
            "--width",
            "4",
        ],  # fp16 convolutions are slow on CPUs
    ],
    ids=["bf16-channels_last-auto", "fp16-scaler"],
)
def test_cifar10_preset_end_to_end(tmp_path, switches):
    """The paper's preset on a synthetic CIFAR-10 (40 training images, ResNet-18 at width 8):
    every method trains, the log holds throughput, and the table is printed."""
    write_cifar(str(tmp_path / "data"))
    out = str(tmp_path / "out")
    rc, stdout = _run(
        [
            "train",
            "--preset",
            "cifar10-paper",
            "--data_dir",
            str(tmp_path / "data"),
            "--epochs",
            "2",
            "--width",
            "8",
            "--bs",
            "16",
            "--threads",
            "1",
            "--no_progress",
            "--out",
            out,
            *switches,
        ]
    )
    assert rc == 0, stdout
    config, records = read_log(os.path.join(out, "log.jsonl"))
    methods = (
        switches[switches.index("--methods") + 1].split(",")
        if "--methods" in switches
        else ["sgd", "sam", "xsam"]
    )
    assert config["preset"] == "cifar10-paper" and config["model"] == "resnet18"
    assert config["cutout"] == 16 and config["amp"] == switches[1]
    assert (config["n_train"], config["n_test"]) == (5 * N_TRAIN_FILE, N_TEST)
    assert [(r["method"], r["epoch"]) for r in records] == [(m, e) for m in methods for e in (1, 2)]
    for r in records:
        assert r["steps"] == r["epoch"] * 3  # 40 images in batches of 16
        assert r["images_per_s"] > 0 and np.isfinite(r["train_loss"])
        assert r["skipped_steps"] == 0
    assert "img/s" in stdout and "epoch 2/2" in stdout  # one line per epoch with throughput
    assert "| XSAM " in stdout


def test_cifar100_end_to_end(tmp_path):
    write_cifar(str(tmp_path / "data"), "cifar100")
    out = str(tmp_path / "out")
    rc, stdout = _run(
        [
            "train",
            "--preset",
            "cifar100-paper",
            "--data_dir",
            str(tmp_path / "data"),
            "--epochs",
            "1",
            "--width",
            "4",
            "--bs",
            "20",
            "--methods",
            "xsam",
            "--threads",
            "1",
            "--no_progress",
            "--out",
            out,
        ]
    )
    assert rc == 0, stdout
    config, records = read_log(os.path.join(out, "log.jsonl"))
    assert config["dataset"] == "cifar100" and len(records) == 1
    assert records[0]["search_curve"] is not None  # the epoch's alpha search ran
