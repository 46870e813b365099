"""On-device augmentation of CIFAR batches: crop, flip, Cutout, normalisation, reproducibility."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xsam_fast.train.augment import ImageTransform, cutout, random_crop, random_flip

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _images(n: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def test_crop_is_a_window_of_the_zero_padded_image():
    x = _images()
    out = random_crop(x, 4, torch.Generator().manual_seed(1))
    padded = F.pad(x, (4, 4, 4, 4))
    offsets = set()
    for i in range(len(x)):
        hits = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            if torch.equal(out[i], padded[i, :, dy : dy + 32, dx : dx + 32])
        ]
        assert hits, f"image {i} is no window of its padded image"
        offsets.add(hits[0])
    assert len(offsets) > 20  # offsets drawn, not fixed


def test_flip_mirrors_about_half_of_the_images():
    x = _images(400)
    out = random_flip(x, torch.Generator().manual_seed(2))
    same = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    mirrored = torch.tensor([torch.equal(o, i.flip(2)) for o, i in zip(out, x)])
    assert bool((same | mirrored).all())
    assert 150 < int(mirrored.sum()) < 250


def test_cutout_zeroes_one_square_in_about_half_of_the_images():
    x = torch.ones(400, 3, 32, 32)
    out = cutout(x, 16, 0.5, torch.Generator().manual_seed(3))
    holes = out[:, 0] == 0  # the same square in every channel
    assert torch.equal(holes[:, None].expand_as(out), out == 0)
    cut = holes.flatten(1).any(1)
    assert 150 < int(cut.sum()) < 250
    for hole in holes[cut]:
        rows, cols = hole.any(1).nonzero().flatten(), hole.any(0).nonzero().flatten()
        assert len(rows) <= 16 and len(cols) <= 16  # clipped at the border
        assert int(hole.sum()) == len(rows) * len(cols)  # a rectangle
        assert rows.diff().eq(1).all() and cols.diff().eq(1).all()


def test_plain_transform_only_normalises():
    x = _images(8)
    out = ImageTransform(MEAN, STD)(x)
    expected = (
        x.double() / 255 - torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    ) / torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_augmented_batches_are_reproducible_per_seed(channels_last):
    t = ImageTransform(MEAN, STD, augment=True, cutout=16, channels_last=channels_last)
    x = _images(32)
    a = t(x, torch.Generator().manual_seed(7))
    b = t(x, torch.Generator().manual_seed(7))
    c = t(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (32, 3, 32, 32)
    assert a.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_an_epoch_of_augmented_batches_follows_the_run_generator():
    from xsam_fast.train.data import TensorBatches

    x, y = _images(40), torch.arange(40) % 10
    batches = TensorBatches(
        x, y, 16, shuffle=True, transform=ImageTransform(MEAN, STD, augment=True, cutout=8)
    )

    def epoch(seed):
        return [b for b in batches.epoch(torch.Generator().manual_seed(seed))]

    a, b, c = epoch(3), epoch(3), epoch(4)
    assert [len(t) for t, _ in a] == [16, 16, 8]
    assert all(torch.equal(p, q) and torch.equal(s, t) for (p, s), (q, t) in zip(a, b))
    assert not all(torch.equal(p, q) for (p, _), (q, _) in zip(a, c))
    state = torch.get_rng_state()
    plain = TensorBatches(x, y, 16, shuffle=False, transform=ImageTransform(MEAN, STD))
    list(plain.epoch(None))  # evaluation: no draw from the global generator
    assert torch.equal(state, torch.get_rng_state())
