"""Micro-benchmark of the cpu backend's phase calls (``xsam_fast/backends/base.py``).

Medians of ``time.perf_counter`` over repeated calls on packed lists:

* host cost: each phase on N float32 tensors of 64 elements (N = 3, 62, 300), one
  thread; us per call, and us per added tensor (the slope from 3 to 300 tensors);
* bandwidth: ``sgd_update`` (momentum, weight decay) and ``final_sums`` on the
  ResNet-18 shapes of ``bench_step`` (62 float32 tensors, 11.2M elements), 1 and 2
  threads; ms per call and GB/s of tensor traffic (6 and 3 passes over the elements).

    python -m benchmarks.cpu_phases [--reps 2000] [--big-reps 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable

import torch

from xsam_fast.backends import base as B
from xsam_fast.backends.cpu import CpuBackend

from .bench_step import RESNET18_SHAPES
from .machine import cpu_name

HOST_TENSORS = (3, 62, 300)
#: passes over the elements (reads + writes) of the bandwidth cases
TRAFFIC = {"sgd_update": 6, "final_sums": 3}


def median_seconds(fn: Callable[[], None], reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


PHASES = (
    "sumsq",
    "final_sums",
    "update_scalars",
    "backup_ascent",
    "write_point",
    "sgd_update",
    "adam_update",
)


def phase_call(shapes: list[tuple[int, ...]], phase: str) -> Callable[[], None]:
    """``phase`` on fresh float32 tensors of ``shapes``, packed once. Every phase gets its
    own state: one phase's repeated results must not become another's inputs (Adam's
    moments decayed to subnormals by other phases' coefficients run many times slower)."""
    backend = CpuBackend()
    gen = torch.Generator().manual_seed(0)

    def make() -> list[torch.Tensor]:
        return [0.1 * torch.randn(s, generator=gen) for s in shapes]

    params = backend.pack(make())
    backups, grads, bufs, sq = (backend.pack(make(), like=params) for _ in range(4))
    for t in sq:
        t.abs_()
    sc = torch.zeros(B.NSCALARS, dtype=torch.float64)
    sc[B.SUMSQ], sc[B.EPS], sc[B.C_D], sc[B.C_G] = 1.0, 1e-12, 0.3, 0.9
    sc[B.GG], sc[B.DD], sc[B.DG], sc[B.ALPHA] = 0.9, 0.04, 0.1, 0.5
    hyper = torch.tensor([0.05, 1e-3, 5e-4, 0.9, 0.999, 1e-8], dtype=torch.float64)
    steps = torch.full((len(shapes),), 3.0)
    # views made once, as an optimizer keeps them: slicing costs more than some calls
    sumsq, sums, coeffs = sc[B.SUMSQ : B.SUMSQ + 1], sc[B.SUMS], sc[B.COEFFS]
    calls = {
        "sumsq": lambda: backend.sumsq(grads, sumsq, accumulate=False),
        "final_sums": lambda: backend.final_sums(params, backups, grads, sums, accumulate=False),
        "update_scalars": lambda: backend.update_scalars(sc, check=True),
        "backup_ascent": lambda: backend.backup_ascent(
            params, grads, backups, sc, hyper, backup=True
        ),
        "write_point": lambda: backend.write_point(params, params, backups, grads, coeffs),
        "sgd_update": lambda: backend.sgd_update(
            params,
            params,
            backups,
            grads,
            bufs,
            sc,
            hyper,
            weight_decay=True,
            momentum=True,
            nesterov=False,
            maximize=False,
            init_bufs=False,
        ),
        "adam_update": lambda: backend.adam_update(
            params,
            params,
            backups,
            grads,
            bufs,
            sq,
            steps,
            sc,
            hyper,
            weight_decay=True,
            decoupled=True,
            maximize=False,
        ),
    }
    return calls[phase]


def host_cost(reps: int) -> None:
    torch.set_num_threads(1)
    per_n = {
        n: {k: median_seconds(phase_call([(64,)] * n, k), reps) for k in PHASES}
        for n in HOST_TENSORS
    }
    lo, hi = HOST_TENSORS[0], HOST_TENSORS[-1]
    print(f"host cost, float32 tensors of 64 elements, 1 thread (median of {reps} calls)")
    print(
        f"{'phase':16}"
        + "".join(f"{f'{n} tensors':>13}" for n in HOST_TENSORS)
        + f"{'per tensor':>13}"
    )
    for phase in per_n[lo]:
        slope = (per_n[hi][phase] - per_n[lo][phase]) / (hi - lo)
        print(
            f"{phase:16}"
            + "".join(f"{per_n[n][phase] * 1e6:10.2f} us" for n in HOST_TENSORS)
            + f"{slope * 1e6:10.3f} us"
        )


def bandwidth(reps: int) -> None:
    shapes = list(RESNET18_SHAPES)
    n = sum(torch.Size(s).numel() for s in shapes)
    print(
        f"\nResNet-18 shapes: {len(shapes)} float32 tensors, {n / 1e6:.2f}M elements "
        f"(median of {reps} calls)"
    )
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for phase, passes in TRAFFIC.items():
            t = median_seconds(phase_call(shapes, phase), reps)
            print(
                f"{threads} thread(s)  {phase:12} {t * 1e3:8.2f} ms  "
                f"{passes * 4 * n / t / 1e9:6.1f} GB/s"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=2000, help="calls per host-cost figure")
    parser.add_argument("--big-reps", type=int, default=30, help="calls per bandwidth figure")
    args = parser.parse_args()
    print(f"{cpu_name()}, isa {CpuBackend.isa()}, load average {os.getloadavg()[0]:.2f}")
    host_cost(args.reps)
    bandwidth(args.big_reps)


if __name__ == "__main__":
    main()
