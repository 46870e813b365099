"""Timers, percentiles and the memory-bandwidth probes every benchmark shares.

Times are seconds (floats) unless a name says otherwise; bandwidths bytes/s.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable, Sequence

import torch


class Timer:
    """Wall time of a callable, queued device work included: ``perf_counter`` on the CPU,
    CUDA events (then a synchronisation) on a GPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = torch.device(device).type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self, fn: Callable[[], Any]) -> float:
        """Seconds taken by ``fn()``."""
        self.sync()
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def host_seconds(fn: Callable[[], Any]) -> float:
    """Host wall time of ``fn()`` alone: no synchronisation, queued device work excluded."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in [0, 100]) of a non-empty sequence."""
    xs = sorted(values)
    if not xs:
        raise ValueError("percentile of no values")
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """``(median, p10, p90)`` of a non-empty sequence."""
    return statistics.median(values), percentile(values, 10), percentile(values, 90)


class BandwidthProbe:
    """The device's memory bandwidth, two ways, on two buffers of ``nbytes`` each.

    * copy: ``dst.copy_(src)``, bytes read + written counted (the floor's definition;
      on a GPU the device-to-device copy);
    * read-modify-write: ``dst.add_(src)``, 2 reads + 1 write counted, the access
      pattern of the fused in-place passes. On CPUs where a copy pays a
      read-for-ownership of its destination this is the higher of the two, so the
      floor at this bandwidth is the stricter one.

    Meant to be timed in the same loop as the steps, so that the floor is measured
    under the same load.
    """

    def __init__(self, device: torch.device, nbytes: int) -> None:
        n = max(nbytes // 4, 1)
        self.src = torch.rand(n, device=device)
        self.dst = torch.empty_like(self.src)
        self.dst.copy_(self.src)  # touch every page before timing
        self.copy_bytes = 2 * n * 4
        self.rmw_bytes = 3 * n * 4
        self.timer = Timer(device)

    def time_once(self) -> tuple[float, float]:
        """Seconds of one copy and of one in-place add (dst grows by at most 1 per call)."""
        return (
            self.timer(lambda: self.dst.copy_(self.src)),
            self.timer(lambda: self.dst.add_(self.src)),
        )

    def bandwidths(self, times: Sequence[tuple[float, float]]) -> tuple[float, float]:
        """Copy and read-modify-write bytes/s from the medians of ``times``."""
        return (
            self.copy_bytes / statistics.median(t[0] for t in times),
            self.rmw_bytes / statistics.median(t[1] for t in times),
        )
