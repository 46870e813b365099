"""pytest-benchmark suite: one XSAM step per available backend and per baseline.

Not part of the default test run (``testpaths = ["tests"]``). Run it with

    pytest benchmarks/ --benchmark-only
    XSAM_BENCH_SIZE=tiny XSAM_BENCH_DTYPE=bf16 pytest benchmarks/ --benchmark-only

It times the same step as ``python -m benchmarks.bench_step`` (first_step +
second_step, fixed alpha, pre-made gradients, SGD momentum + weight decay) on
one small size (default ``resnet18``, on the CPU; ``XSAM_BENCH_DEVICE=cuda``
for a GPU). The floor and the copy bandwidth are bench_step's business.
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("pytest_benchmark")

import xsam_fast  # noqa: E402

from .baselines import BASELINES  # noqa: E402
from .impls import baseline_impl, prepare_step, xsam_impl  # noqa: E402
from .shapes import DTYPES, SIZES, make_tensors, numel  # noqa: E402
from .timing import Timer  # noqa: E402

SIZE = os.environ.get("XSAM_BENCH_SIZE", "resnet18")
DTYPE = os.environ.get("XSAM_BENCH_DTYPE", "fp32")
DEVICE = torch.device(os.environ.get("XSAM_BENCH_DEVICE", "cpu"))
LABELS = [*xsam_fast.available_backends(), *BASELINES]


@pytest.fixture(scope="module")
def master():
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("XSAM_BENCH_DEVICE=cuda but no CUDA device")
    return make_tensors(SIZES[SIZE](), DTYPES[DTYPE], DEVICE, 0)


@pytest.mark.parametrize("label", LABELS)
def test_xsam_step(benchmark, master, label: str) -> None:
    impl = baseline_impl(label) if label in BASELINES else xsam_impl(label, "warn")
    ok, why = impl.supports(DEVICE, DTYPES[DTYPE])
    if not ok:
        pytest.skip(why)
    step, _, _ = prepare_step(impl, master)
    timer = Timer(DEVICE)
    if DEVICE.type == "cuda":

        def run() -> None:
            step()
            timer.sync()
    else:
        run = step
    benchmark.group = f"xsam step {SIZE} {DTYPE} {DEVICE.type}"
    benchmark.extra_info.update(n_params=numel(SIZES[SIZE]()), impl=impl.label)
    benchmark.pedantic(run, rounds=10, warmup_rounds=max(2, impl.min_warmup), iterations=1)
