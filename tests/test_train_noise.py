"""Symmetric label noise: how many labels change, to what, and that it is reproducible."""

from __future__ import annotations

import pytest
import torch

from xsam_fast.train.noise import symmetric_label_noise


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.4, 0.75])
@pytest.mark.parametrize("classes", [2, 10, 100])
def test_exactly_the_rate_is_changed_to_other_classes(rate, classes):
    labels = torch.randint(0, classes, (997,), generator=torch.Generator().manual_seed(1))
    noisy, changed = symmetric_label_noise(labels, rate, classes, seed=3)
    assert int(changed.sum()) == round(rate * len(labels))
    assert torch.equal(noisy != labels, changed)  # every changed label is wrong, no other
    assert int(noisy.min()) >= 0 and int(noisy.max()) < classes
    assert noisy.dtype == labels.dtype and labels.max() < classes  # input untouched


def test_wrong_labels_are_uniform_over_the_other_classes():
    n, classes = 60000, 10
    labels = torch.zeros(n, dtype=torch.long)  # all class 0: the new ones spread over 1..9
    noisy, changed = symmetric_label_noise(labels, 0.5, classes, seed=0)
    counts = torch.bincount(noisy[changed], minlength=classes)
    assert counts[0] == 0
    expected = n * 0.5 / (classes - 1)
    chi2 = float((((counts[1:] - expected) ** 2) / expected).sum())
    assert chi2 < 27.9, counts.tolist()  # chi-square, 8 d.o.f., p = 0.0005


def test_the_seed_fixes_the_noise():
    labels = torch.arange(500) % 10
    a = symmetric_label_noise(labels, 0.3, 10, seed=5)[0]
    assert torch.equal(a, symmetric_label_noise(labels, 0.3, 10, seed=5)[0])
    assert not torch.equal(a, symmetric_label_noise(labels, 0.3, 10, seed=6)[0])


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_a_rate_outside_0_1_is_refused(rate):
    with pytest.raises(ValueError, match="label noise"):
        symmetric_label_noise(torch.zeros(4, dtype=torch.long), rate, 10, seed=0)


def test_digits_noise_leaves_the_test_set_clean():
    pytest.importorskip("sklearn")
    from xsam_fast.train.data import load_dataset

    clean = load_dataset("digits", batch_size=64)
    noisy = load_dataset("digits", batch_size=64, label_noise=0.4)
    assert torch.equal(clean.test.targets, noisy.test.targets)
    assert torch.equal(clean.train.inputs, noisy.train.inputs)
    wrong = int((clean.train.targets != noisy.train.targets).sum())
    assert wrong == noisy.info["noisy_labels"] == round(0.4 * clean.n_train)
