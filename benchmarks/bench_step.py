"""Optimizer overhead of one XSAM step, every backend side by side with the baselines.

    python -m benchmarks.bench_step                      # CPU default cases (a few minutes)
    python -m benchmarks.bench_step --device cuda        # GPU default cases
    python -m benchmarks.bench_step --sizes resnet18 --dtypes fp32 --backends reference,foreach

What is timed: ``first_step`` + ``second_step`` (fixed alpha, one ascent) of each
implementation on a set of parameter shapes. Gradients are pre-filled random
tensors (no forward/backward); the gradient at the ascent point is emulated by
assigning a second pre-made gradient list to ``p.grad`` between the two phases,
identically for every implementation. The base optimizer is SGD with momentum
0.9 and weight decay. For each (size, dtype, implementation) the harness reports
the median and p10/p90 step time, the bandwidth implied by the 56 bytes/param
floor of ``XSAM_MATH.md`` (14 elements per parameter, so 28 bytes for 16-bit
types), the ratio to the floor time at the copy bandwidth measured in the same
run (and at the in-place ``add_`` bandwidth, the stricter floor where a copy
pays a read-for-ownership), the speed-ups over the authors-style and foreach
baselines, and the extra memory of the
optimizer (CPU: bytes of the tensors in the optimizer and base-optimizer state;
CUDA: peak ``max_memory_allocated`` over the parameters and gradients).

Outputs (``--out``, default ``results/bench``): ``step_<device>_<stamp>.csv``
(one row per measurement, with date and machine columns), ``.md`` (the printed
table in Markdown) and ``.png`` (bars of ms per implementation, floor as a line).
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import gc
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

import xsam_fast
from xsam_fast import XSAM
from xsam_fast.backends import get_backend

from .baselines import BASELINES
from .machine import cpu_name

Shape = tuple[int, ...]

# --------------------------------------------------------------------- sizes

#: ResNet-18 for CIFAR-10 (3x3 stem, no max-pool, 10 classes), as the authors
#: train it: 62 parameter tensors, 11,173,962 parameters, in model order.
RESNET18_SHAPES: list[Shape] = [
    (64, 3, 3, 3), (64,), (64,),                                       # conv1, bn1
    # layer1: two blocks of conv-bn-conv-bn, 64 channels
    (64, 64, 3, 3), (64,), (64,), (64, 64, 3, 3), (64,), (64,),
    (64, 64, 3, 3), (64,), (64,), (64, 64, 3, 3), (64,), (64,),
    # layer2: 128 channels, stride 2, 1x1 conv + bn shortcut in the first block
    (128, 64, 3, 3), (128,), (128,), (128, 128, 3, 3), (128,), (128,),
    (128, 64, 1, 1), (128,), (128,),
    (128, 128, 3, 3), (128,), (128,), (128, 128, 3, 3), (128,), (128,),
    # layer3: 256 channels
    (256, 128, 3, 3), (256,), (256,), (256, 256, 3, 3), (256,), (256,),
    (256, 128, 1, 1), (256,), (256,),
    (256, 256, 3, 3), (256,), (256,), (256, 256, 3, 3), (256,), (256,),
    # layer4: 512 channels
    (512, 256, 3, 3), (512,), (512,), (512, 512, 3, 3), (512,), (512,),
    (512, 256, 1, 1), (512,), (512,),
    (512, 512, 3, 3), (512,), (512,), (512, 512, 3, 3), (512,), (512,),
    (10, 512), (10,),                                                  # linear
]

#: a handful of small shapes (odd lengths included) for smoke tests
TINY_SHAPES: list[Shape] = [(33,), (7, 5), (16, 3, 3, 3), (1000,), (130, 17)]


def transformer_shapes(vocab: int, context: int, width: int, layers: int) -> list[Shape]:
    """Parameter shapes of a GPT-2-like decoder (tied embeddings, biases, 4x MLP)."""
    d = width
    shapes: list[Shape] = [(vocab, d), (context, d)]
    for _ in range(layers):
        shapes += [(d,), (d,),                      # ln_1
                   (3 * d, d), (3 * d,),            # fused q, k, v
                   (d, d), (d,),                    # attention output
                   (d,), (d,),                      # ln_2
                   (4 * d, d), (4 * d,),            # MLP in
                   (d, 4 * d), (d,)]                # MLP out
    return shapes + [(d,), (d,)]                    # final layer norm


SIZES: dict[str, Callable[[], list[Shape]]] = {
    "tiny": lambda: list(TINY_SHAPES),
    "resnet18": lambda: list(RESNET18_SHAPES),
    "100M": lambda: transformer_shapes(50257, 1024, 768, 9),    # 103.2M parameters
    "125M": lambda: transformer_shapes(50257, 1024, 768, 12),   # GPT-2 small, 124.4M
    "1B": lambda: transformer_shapes(50304, 2048, 2048, 18),    # 1.01B
}

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64,
}

#: cases run when neither --sizes nor --dtypes is given
DEFAULT_CASES: dict[str, list[tuple[str, str]]] = {
    "cpu": [("resnet18", "fp32"), ("resnet18", "bf16"), ("100M", "fp32")],
    "cuda": [(s, d) for s in ("resnet18", "125M", "1B") for d in ("fp32", "bf16")],
}

#: elements moved per parameter by a fused step at the floor (XSAM_MATH.md: 56 B in fp32)
FLOOR_ELEMENTS_PER_PARAM = 14

# hyper-parameters of the timed step (same for every implementation)
RHO, ALPHA, LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.5, 1e-3, 0.9, 5e-4


def numel(shapes: Sequence[Shape]) -> int:
    return sum(math.prod(s) for s in shapes)


# ----------------------------------------------------------- implementations

@dataclass
class Impl:
    """One thing to time: a label and how to build it on a list of parameters."""

    label: str
    make: Callable[[list[Tensor]], torch.optim.Optimizer]
    backup_first: bool  # call backup_param() before first_step (the authors' sequence)
    backend: str | None = None  # xsam_fast backend name, None for a baseline

    def supports(self, device: torch.device, dtype: torch.dtype) -> tuple[bool, str]:
        if self.backend is None:
            return True, ""
        try:
            get_backend(self.backend, device, dtype)
        except RuntimeError as exc:
            return False, str(exc)
        return True, ""


def _base_kwargs() -> dict[str, Any]:
    return dict(lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def xsam_impl(backend: str, nonfinite: str) -> Impl:
    def make(params: list[Tensor]) -> torch.optim.Optimizer:
        return XSAM(params, torch.optim.SGD, rho=RHO, alpha=ALPHA, backend=backend,
                    nonfinite=nonfinite, **_base_kwargs())
    return Impl(f"xsam:{backend}", make, backup_first=False, backend=backend)


def baseline_impl(label: str) -> Impl:
    cls = BASELINES[label]

    def make(params: list[Tensor]) -> torch.optim.Optimizer:
        return cls(params, torch.optim.SGD, rho=RHO, alpha=ALPHA, **_base_kwargs())
    # the authors' sequence needs backup_param(); ForeachXSAM backs up inside first_step
    return Impl(label, make, backup_first=(label == "authors-style"))


_ALIASES = {"authors": "authors-style", "authors_style": "authors-style"}


#: baselines timed by default; "compiled" (torch.compile, a minute or more of compilation
#: per case on a CPU) by default on CUDA only
DEFAULT_BASELINES = {"cpu": ["authors-style", "foreach"],
                     "cuda": ["authors-style", "foreach", "compiled"]}


def resolve_impls(names: str | None, nonfinite: str, device: torch.device) -> list[Impl]:
    """``--backends``: xsam_fast backend names and baseline labels; default every available
    backend and the device's :data:`DEFAULT_BASELINES`."""
    available = xsam_fast.available_backends()
    if names is None:
        wanted = [*available, *DEFAULT_BASELINES.get(device.type, DEFAULT_BASELINES["cpu"])]
    else:
        wanted = [_ALIASES.get(n.strip(), n.strip()) for n in names.split(",") if n.strip()]
    impls = []
    status = xsam_fast.backend_status()
    for name in wanted:
        if name in BASELINES:
            impls.append(baseline_impl(name))
        elif name in status:
            if name not in available:
                _log(f"skipping backend {name!r}: not available ({status[name]})")
                continue
            impls.append(xsam_impl(name, nonfinite))
        else:
            raise SystemExit(f"unknown implementation {name!r}; choose from "
                             f"{', '.join([*status, *BASELINES])}")
    return impls


# ------------------------------------------------------------------ machine

def machine_info(device: torch.device) -> dict[str, str]:
    """Date and a hostname-free description of the machine and the software."""
    cpu = cpu_name()
    try:
        import importlib.metadata as md
        triton = md.version("triton")
    except Exception:
        triton = ""
    info = dict(
        date=_dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        device=device.type,
        machine=cpu,
        cores=str(os.cpu_count()),
        torch_threads=str(torch.get_num_threads()),
        torch=torch.__version__,
        triton=triton,
        python=platform.python_version(),
        xsam_fast=xsam_fast.__version__,
        backends_available=" ".join(xsam_fast.available_backends()),
    )
    if device.type == "cuda":
        info["machine"] = f"{torch.cuda.get_device_name(device)} (host: {cpu})"
    return info


# ------------------------------------------------------------------- timing

class Timer:
    """Wall time of a callable: perf_counter on the CPU, CUDA events (synchronised) on GPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self, fn: Callable[[], Any]) -> float:
        """Seconds taken by ``fn()``, queued work included."""
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


class BandwidthProbe:
    """The machine's memory bandwidth, two ways, on two large buffers.

    * copy: ``dst.copy_(src)``, read + written bytes counted (the issue's floor);
    * read-modify-write: ``dst.add_(src)``, 2 reads + 1 write counted, the access
      pattern of the fused in-place passes. On CPUs where a copy pays a
      read-for-ownership of its destination this is the higher of the two, so the
      floor at this bandwidth is the stricter one.

    Timed in the same loop as the steps (interleaved with them by default on
    the CPU), so that the floor is measured under the same load as the steps.
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
        return (self.timer(lambda: self.dst.copy_(self.src)),
                self.timer(lambda: self.dst.add_(self.src)))

    def bandwidths(self, times: Sequence[tuple[float, float]]) -> tuple[float, float]:
        """Copy and read-modify-write bytes/s from the medians of ``times``."""
        return (self.copy_bytes / statistics.median(t[0] for t in times),
                self.rmw_bytes / statistics.median(t[1] for t in times))


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100])."""
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of distinct tensors held in the optimizer's state and its base optimizer's."""
    seen: set[tuple[int, int]] = set()
    total = 0
    states = [opt.state]
    base = getattr(opt, "base_optimizer", None)
    if base is not None:
        states.append(base.state)
    for state in states:
        for per_param in state.values():
            for value in per_param.values():
                if isinstance(value, Tensor):
                    key = (value.untyped_storage().data_ptr(), value.untyped_storage().nbytes())
                    if key not in seen:
                        seen.add(key)
                        total += value.untyped_storage().nbytes()
    return total


def make_tensors(shapes: Sequence[Shape], dtype: torch.dtype, device: torch.device,
                 seed: int) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Initial parameters, first and second gradients (reproducible)."""
    gen = torch.Generator(device=device).manual_seed(seed)  # generated where they live

    def one(shape: Shape, std: float) -> Tensor:
        return torch.randn(shape, generator=gen, device=device).mul_(std).to(dtype)
    params = [one(s, 0.05) for s in shapes]
    g1 = [one(s, 1e-3) for s in shapes]
    g2 = [one(s, 1e-3) for s in shapes]
    return params, g1, g2


def prepare_step(impl: Impl, master: tuple[list[Tensor], list[Tensor], list[Tensor]]
                 ) -> tuple[Callable[[], None], torch.optim.Optimizer, list[Tensor]]:
    """Fresh copies of the tensors, the optimizer, and a callable running one XSAM step."""
    params = [torch.nn.Parameter(t.clone()) for t in master[0]]
    g1 = [t.clone() for t in master[1]]  # implementations may overwrite .grad in place
    g2 = [t.clone() for t in master[2]]
    opt = impl.make(params)

    def step() -> None:
        for p, g in zip(params, g1):
            p.grad = g
        if impl.backup_first:
            opt.backup_param()
        opt.first_step(0)
        for p, g in zip(params, g2):  # "the gradient at the ascent point"
            p.grad = g
        opt.second_step(False)
    return step, opt, params


@dataclass
class _Running:
    impl: Impl
    step: Callable[[], None]
    opt: torch.optim.Optimizer
    times: list[float]
    mem_baseline: int = 0


def run_case(impls: list[Impl], master: tuple[list[Tensor], list[Tensor], list[Tensor]],
             device: torch.device, probe: BandwidthProbe, *, repeat: int, warmup: int,
             budget_s: float, interleave: bool, progress: Callable[[str], None]
             ) -> list[dict[str, Any]]:
    """Time one XSAM step of each implementation (and the bandwidth probe) on one case.

    ``interleave``: all implementations are built first and timed round-robin,
    one step each per round after one probe measurement, so that a change of load
    on a shared machine hits them all alike (needs every implementation's memory
    at once). Otherwise each implementation is built, timed alone after its own
    probe series, and freed. Returns one dict per implementation:
    ``times`` (seconds) and ``probe_times`` (pairs of seconds, see
    :meth:`BandwidthProbe.time_once`), ``state_mb``, ``peak_extra_mb``.
    """
    cuda = device.type == "cuda"
    timer = Timer(device)
    results = []

    def start(impl: Impl) -> _Running:
        base = 0
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
            # the copies of params and of both gradient lists are not the optimizer's
            base = torch.cuda.memory_allocated(device) + 3 * sum(t.nbytes for t in master[0])
        step, opt, _ = prepare_step(impl, master)
        for _ in range(warmup):
            timer(step)
        return _Running(impl, step, opt, [], base)

    def finish(run: _Running, probe_times: list[float]) -> None:
        results.append(dict(
            impl=run.impl, times=run.times, probe_times=probe_times,
            state_mb=state_bytes(run.opt) / 2**20,
            peak_extra_mb=((torch.cuda.max_memory_allocated(device) - run.mem_baseline) / 2**20
                           if cuda else None)))

    def done(n_done: int, started: float, budget: float) -> bool:
        return n_done >= repeat or (n_done >= 3 and time.perf_counter() - started > budget)

    if interleave:
        progress(f"building {len(impls)} implementations, {warmup} warm-up steps each")
        runs = [start(impl) for impl in impls]
        probe_times: list[float] = []
        started = time.perf_counter()
        while not done(len(probe_times), started, budget_s * len(runs)):
            probe_times.append(probe.time_once())
            for run in runs:
                run.times.append(timer(run.step))
            progress(f"round {len(probe_times)}/{repeat}: " + ", ".join(
                f"{r.impl.label} {r.times[-1] * 1e3:.2f} ms" for r in runs))
        if cuda:  # one peak for all: not per implementation
            progress("interleaved on CUDA: peak memory is the case's, not per implementation")
        for run in runs:
            finish(run, probe_times)
        del runs
    else:
        for impl in impls:
            probe_times = [probe.time_once() for _ in range(max(repeat, 10))]
            progress(f"{impl.label}: {warmup} warm-up + up to {repeat} timed steps")
            run = start(impl)
            started = time.perf_counter()
            while not done(len(run.times), started, budget_s):
                run.times.append(timer(run.step))
                progress(f"{impl.label} rep {len(run.times)}/{repeat}: {run.times[-1] * 1e3:.2f} ms")
            finish(run, probe_times)
            del run
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return results


# ------------------------------------------------------------------ output

CSV_COLUMNS = [
    "date", "device", "machine", "cores", "torch_threads", "torch", "triton", "python",
    "xsam_fast", "backends_available", "impl", "size", "dtype", "n_params", "n_tensors",
    "warmup", "repeats", "median_ms", "p10_ms", "p90_ms", "floor_bytes", "gbps",
    "copy_gbps", "floor_ms", "x_floor", "rmw_gbps", "floor_rmw_ms", "x_floor_rmw",
    "speedup_vs_authors", "speedup_vs_foreach",
    "state_mb", "peak_extra_mb", "nonfinite", "interleaved",
]


def _fmt(value: Any, spec: str) -> str:
    return "" if value is None else format(value, spec)


def table_lines(rows: list[dict[str, Any]], markdown: bool = False) -> list[str]:
    head = ["implementation", "size", "dtype", "ms (p10-p90)", "GB/s", "x floor",
            "x floor (add_)", "vs authors", "vs foreach", "extra MB"]
    body = []
    for r in rows:
        mem = r["peak_extra_mb"] if r["peak_extra_mb"] not in (None, "") else r["state_mb"]
        body.append([
            r["impl"], r["size"], r["dtype"],
            f"{r['median_ms']:.2f} ({r['p10_ms']:.2f}-{r['p90_ms']:.2f})",
            f"{r['gbps']:.1f}", f"{r['x_floor']:.2f}", f"{r['x_floor_rmw']:.2f}",
            _fmt(r["speedup_vs_authors"], ".2f") + ("x" if r["speedup_vs_authors"] else ""),
            _fmt(r["speedup_vs_foreach"], ".2f") + ("x" if r["speedup_vs_foreach"] else ""),
            f"{float(mem):.1f}" if float(mem) >= 1 else f"{float(mem):.3f}",
        ])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        return lines + ["| " + " | ".join(row) + " |" for row in body]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in body]


def write_plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys((r["size"], r["dtype"]) for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    colors = {name: plt.cm.tab10(i % 10) for i, name in enumerate(impls)}
    fig, axes = plt.subplots(1, len(cases), figsize=(max(4.0, 3.6 * len(cases)), 4.2),
                             squeeze=False)
    for ax, (size, dtype) in zip(axes[0], cases):
        sub = [r for r in rows if (r["size"], r["dtype"]) == (size, dtype)]
        xs = range(len(sub))
        ms = [r["median_ms"] for r in sub]
        err = [[r["median_ms"] - r["p10_ms"] for r in sub], [r["p90_ms"] - r["median_ms"] for r in sub]]
        ax.bar(xs, ms, yerr=err, color=[colors[r["impl"]] for r in sub], capsize=3)
        for x, r in zip(xs, sub):
            ax.text(x, r["p90_ms"], f"{r['median_ms']:.3g}", ha="center", va="bottom", fontsize=7)
        ax.axhline(sub[0]["floor_ms"], color="k", linestyle="--", linewidth=1,
                   label=f"floor at copy bw {sub[0]['floor_ms']:.3g} ms")
        ax.axhline(sub[0]["floor_rmw_ms"], color="k", linestyle=":", linewidth=1,
                   label=f"floor at add_ bw {sub[0]['floor_rmw_ms']:.3g} ms")
        ax.set_xticks(list(xs), [r["impl"] for r in sub], rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{size} ({sub[0]['n_params'] / 1e6:.3g}M params) {dtype}", fontsize=9)
        ax.set_ylabel("ms per step (median, p10-p90)")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ------------------------------------------------------------------- main

def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_step",
        description="Time the optimizer overhead of one XSAM step (first_step + second_step, "
                    "fixed alpha) for every backend and the baselines, against the 56 B/param "
                    "memory-bandwidth floor measured in the same run.")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--sizes", help=f"comma list among {', '.join(SIZES)}. Without --sizes and "
                   "--dtypes the device's default cases run (cpu: resnet18 fp32+bf16, 100M fp32; "
                   "cuda: resnet18, 125M, 1B in fp32+bf16); with either, their cross product "
                   "(missing one defaults to fp32 / resnet18)")
    p.add_argument("--dtypes", help=f"comma list among {', '.join(DTYPES)}")
    p.add_argument("--backends", help="comma list of xsam_fast backends and baselines "
                   f"({', '.join(BASELINES)}); default: every available backend plus the "
                   "baselines (compiled on cuda only)")
    p.add_argument("--repeat", type=int, help="timed steps per case (default: cpu 15, cuda 50)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default: cpu 2, cuda 5)")
    p.add_argument("--budget-s", type=float, default=30.0,
                   help="stop timing one implementation after this many seconds (>= 3 repeats)")
    p.add_argument("--copy-mib", type=int, help="size of each copy-bandwidth buffer "
                   "(default: cpu 256, cuda 1024)")
    p.add_argument("--nonfinite", choices=["warn", "raise", "none"], default="warn",
                   help="XSAM's nonfinite option (default 'warn', the package default: two host "
                        "reads of a flag per step)")
    p.add_argument("--interleave", action=argparse.BooleanOptionalAction, default=None,
                   help="time the implementations round-robin (all built at once) with the copy "
                        "probe in every round; default on for cpu (shared, noisy machines), off "
                        "for cuda (memory)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/bench", help="output directory")
    p.add_argument("--no-plot", action="store_true")
    return p


def cases_from_args(args: argparse.Namespace) -> list[tuple[str, str]]:
    if args.sizes is None and args.dtypes is None:
        return list(DEFAULT_CASES[args.device])
    sizes = [s.strip() for s in (args.sizes or "resnet18").split(",") if s.strip()]
    dtypes = [d.strip() for d in (args.dtypes or "fp32").split(",") if d.strip()]
    for s in sizes:
        if s not in SIZES:
            raise SystemExit(f"unknown size {s!r}; choose from {', '.join(SIZES)}")
    for d in dtypes:
        if d not in DTYPES:
            raise SystemExit(f"unknown dtype {d!r}; choose from {', '.join(DTYPES)}")
    return [(s, d) for s in sizes for d in dtypes]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible to torch")
    cuda = device.type == "cuda"
    repeat = args.repeat if args.repeat is not None else (50 if cuda else 15)
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 2)
    if repeat < 1 or warmup < 0:
        raise SystemExit("--repeat must be >= 1 and --warmup >= 0")
    cases = cases_from_args(args)
    impls = resolve_impls(args.backends, args.nonfinite, device)
    if not impls:
        raise SystemExit("nothing to time")
    info = machine_info(device)
    _log(f"xsam-fast bench_step on {info['machine']} ({info['cores']} cores, "
         f"{info['torch_threads']} torch threads), torch {info['torch']}"
         + (f", triton {info['triton']}" if info["triton"] else ""))
    _log(f"available backends: {info['backends_available'] or '(none)'}; timing: "
         f"{', '.join(i.label for i in impls)}")

    copy_mib = args.copy_mib if args.copy_mib is not None else (1024 if cuda else 256)
    probe = BandwidthProbe(device, copy_mib * 2**20)
    interleave = args.interleave if args.interleave is not None else not cuda
    _log(f"floor = {FLOOR_ELEMENTS_PER_PARAM} elements/param at the copy bandwidth "
         f"(dst.copy_(src), {copy_mib} MiB buffers, read+write; also dst.add_(src), "
         f"2 reads + 1 write) measured in each case"
         + (", interleaved with the steps" if interleave else " before each implementation"))

    rows: list[dict[str, Any]] = []
    for k, (size, dtype_name) in enumerate(cases, 1):
        shapes = SIZES[size]()
        dtype = DTYPES[dtype_name]
        n = numel(shapes)
        elem = torch.empty((), dtype=dtype).element_size()
        floor_bytes = FLOOR_ELEMENTS_PER_PARAM * elem * n
        prefix = f"[{k}/{len(cases)}] {size} {dtype_name}"
        _log(f"\n{prefix}: {n:,} parameters in {len(shapes)} tensors; floor traffic "
             f"{floor_bytes / 1e6:.1f} MB per step")
        runnable = []
        for impl in impls:
            ok, why = impl.supports(device, dtype)
            if ok:
                runnable.append(impl)
            else:
                _log(f"{prefix} {impl.label}: skipped ({why})")
        if not runnable:
            continue
        master = make_tensors(shapes, dtype, device, args.seed)
        results = run_case(runnable, master, device, probe, repeat=repeat, warmup=warmup,
                           budget_s=args.budget_s, interleave=interleave,
                           progress=lambda msg, prefix=prefix: _log(f"  {prefix} {msg}"))
        del master
        gc.collect()
        for res in results:
            times = res["times"]
            copy_bw, rmw_bw = probe.bandwidths(res["probe_times"])
            floor_s, floor_rmw_s = floor_bytes / copy_bw, floor_bytes / rmw_bw
            med = statistics.median(times)
            row = dict(info, impl=res["impl"].label, size=size, dtype=dtype_name, n_params=n,
                       n_tensors=len(shapes), warmup=warmup, repeats=len(times),
                       median_ms=med * 1e3, p10_ms=percentile(times, 10) * 1e3,
                       p90_ms=percentile(times, 90) * 1e3, floor_bytes=floor_bytes,
                       gbps=floor_bytes / med / 1e9, copy_gbps=copy_bw / 1e9,
                       floor_ms=floor_s * 1e3, x_floor=med / floor_s,
                       rmw_gbps=rmw_bw / 1e9, floor_rmw_ms=floor_rmw_s * 1e3,
                       x_floor_rmw=med / floor_rmw_s,
                       speedup_vs_authors=None, speedup_vs_foreach=None,
                       state_mb=res["state_mb"], peak_extra_mb=res["peak_extra_mb"],
                       nonfinite=args.nonfinite, interleaved=interleave)
            rows.append(row)
            _log(f"{prefix} {row['impl']}: median {row['median_ms']:.2f} ms, copy "
                 f"{row['copy_gbps']:.1f} GB/s, floor {row['floor_ms']:.2f} ms, "
                 f"{row['x_floor']:.2f}x floor; add_ {row['rmw_gbps']:.1f} GB/s, "
                 f"{row['x_floor_rmw']:.2f}x that floor")
    del probe
    copy_range, rmw_range = (
        (f"{min(r[k] for r in rows):.1f}-{max(r[k] for r in rows):.1f}" if rows else "n/a")
        for k in ("copy_gbps", "rmw_gbps"))

    for r in rows:
        for base, key in (("authors-style", "speedup_vs_authors"), ("foreach", "speedup_vs_foreach")):
            ref = [x for x in rows if (x["impl"], x["size"], x["dtype"]) == (base, r["size"], r["dtype"])]
            if ref:
                r[key] = ref[0]["median_ms"] / r["median_ms"]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    stem = out / f"step_{device.type}_{stamp}"
    lines = table_lines(rows)
    print()
    print(f"XSAM step optimizer overhead, {info['machine']}, torch {info['torch']}, {info['date']}")
    print(f"copy bandwidth {copy_range} GB/s, add_ bandwidth {rmw_range} GB/s over the cases; "
          f"floor = 14 elements/param (56 B fp32, 28 B 16-bit) at the bandwidth measured in "
          f"the case")
    print("\n".join(lines))
    with open(stem.with_suffix(".csv"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({c: ("" if r.get(c) is None else r[c]) for c in CSV_COLUMNS})
    with open(stem.with_suffix(".md"), "w") as fh:
        fh.write(f"Date {info['date']}; {info['machine']}, {info['cores']} cores "
                 f"({info['torch_threads']} torch threads); torch {info['torch']}"
                 + (f", triton {info['triton']}" if info["triton"] else "")
                 + f"; backends available: {info['backends_available']}; "
                 f"copy bandwidth {copy_range} GB/s, add_ bandwidth {rmw_range} GB/s "
                 f"(measured per case); {warmup} warm-up "
                 f"steps, up to {repeat} timed"
                 + (", implementations interleaved round-robin" if interleave else "")
                 + ".\n\n")
        fh.write("\n".join(table_lines(rows, markdown=True)) + "\n")
    written = [stem.with_suffix(".csv"), stem.with_suffix(".md")]
    if rows and not args.no_plot:
        write_plot(rows, stem.with_suffix(".png"),
                   f"XSAM step overhead, {device.type}: {info['machine']}, torch {info['torch']}, "
                   f"{info['date'][:10]}\nfloor: 14 elements/param at the copy ({copy_range} "
                   f"GB/s) and add_ ({rmw_range} GB/s) bandwidths measured in the case")
        written.append(stem.with_suffix(".png"))
    print("\nwritten: " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
