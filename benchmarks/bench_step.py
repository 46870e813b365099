"""Optimizer overhead of one XSAM step, every backend side by side with the baselines.

    python -m benchmarks.bench_step                      # CPU default cases (a few minutes)
    python -m benchmarks.bench_step --device cuda        # GPU default cases
    python -m benchmarks.bench_step --sizes resnet18 --dtypes fp32 --backends reference,foreach
    python -m benchmarks.bench_step --host-overhead      # host time per step, tiny tensors

What is timed: ``first_step`` + ``second_step`` (fixed alpha, one ascent) of each
implementation (:mod:`benchmarks.impls`) on a set of parameter shapes
(:mod:`benchmarks.shapes`). Gradients are pre-filled random tensors (no
forward/backward); the gradient at the ascent point is emulated by assigning a
second pre-made gradient list to ``p.grad`` between the two phases, identically
for every implementation. The base optimizer is SGD with momentum 0.9 and weight
decay. For each (size, dtype, implementation) the harness reports the median and
p10/p90 step time, the bandwidth implied by the floor of ``docs/algorithm.md``
(14 elements moved per parameter: 56 B in fp32, 28 B in 16-bit types), the ratio
to the floor time at the copy bandwidth measured in the same run (and at the
in-place ``add_`` bandwidth, the stricter floor where a copy pays a
read-for-ownership), the speed-ups over the authors-style and foreach baselines,
and the extra memory of the optimizer (CPU: bytes of the tensors in the optimizer
and base-optimizer state; CUDA: peak ``max_memory_allocated`` over the parameters
and gradients).

``--host-overhead`` runs :mod:`benchmarks.host_overhead` instead (its own options).

Outputs (``--out``, default ``results/bench``): ``step_<device>_<stamp>.csv`` (one
row per measurement, with date, load and machine columns), ``.md`` (the printed
table in Markdown) and ``.png`` (bars of ms per implementation, floors as lines).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from . import report
from .baselines import BASELINES
from .impls import DEFAULT_BASELINES, Impl, prepare_step, resolve_impls, state_bytes
from .machine import MACHINE_COLUMNS, describe, machine_info
from .shapes import DTYPES, SIZES, Tensors3, element_size, make_tensors, numel, parse_names
from .timing import BandwidthProbe, Timer, spread

#: cases run when neither --sizes nor --dtypes is given
DEFAULT_CASES: dict[str, list[tuple[str, str]]] = {
    "cpu": [("resnet18", "fp32"), ("resnet18", "bf16"), ("100M", "fp32")],
    "cuda": [(s, d) for s in ("resnet18", "125M", "1B") for d in ("fp32", "bf16")],
}

#: elements moved per parameter by a fused step at the floor (docs/algorithm.md: 56 B in fp32)
FLOOR_ELEMENTS_PER_PARAM = 14


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ timing loop


@dataclass
class _Running:
    impl: Impl
    step: Callable[[], None]
    opt: torch.optim.Optimizer
    times: list[float]
    mem_baseline: int = 0


def run_case(
    impls: list[Impl],
    master: Tensors3,
    device: torch.device,
    probe: BandwidthProbe,
    *,
    repeat: int,
    warmup: int,
    budget_s: float,
    interleave: bool,
    progress: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Time one step of each implementation (and the bandwidth probe) on one case.

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

    def finish(run: _Running, probe_times: list[tuple[float, float]]) -> None:
        results.append(
            dict(
                impl=run.impl,
                times=run.times,
                probe_times=probe_times,
                state_mb=state_bytes(run.opt) / 2**20,
                peak_extra_mb=(
                    (torch.cuda.max_memory_allocated(device) - run.mem_baseline) / 2**20
                    if cuda
                    else None
                ),
            )
        )

    def done(n_done: int, started: float, budget: float) -> bool:
        return n_done >= repeat or (n_done >= 3 and time.perf_counter() - started > budget)

    if interleave:
        progress(f"building {len(impls)} implementations, {warmup} warm-up steps each")
        runs = [start(impl) for impl in impls]
        probe_times: list[tuple[float, float]] = []
        started = time.perf_counter()
        while not done(len(probe_times), started, budget_s * len(runs)):
            probe_times.append(probe.time_once())
            for run in runs:
                run.times.append(timer(run.step))
            progress(
                f"round {len(probe_times)}/{repeat}: "
                + ", ".join(f"{r.impl.label} {r.times[-1] * 1e3:.2f} ms" for r in runs)
            )
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
                progress(
                    f"{impl.label} rep {len(run.times)}/{repeat}: {run.times[-1] * 1e3:.2f} ms"
                )
            finish(run, probe_times)
            del run
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return results


# ------------------------------------------------------------------ rows and reports

CSV_COLUMNS = [
    *MACHINE_COLUMNS,
    "impl",
    "size",
    "dtype",
    "n_params",
    "n_tensors",
    "warmup",
    "repeats",
    "median_ms",
    "p10_ms",
    "p90_ms",
    "floor_bytes",
    "gbps",
    "copy_gbps",
    "floor_ms",
    "x_floor",
    "rmw_gbps",
    "floor_rmw_ms",
    "x_floor_rmw",
    "speedup_vs_authors",
    "speedup_vs_foreach",
    "state_mb",
    "peak_extra_mb",
    "nonfinite",
    "interleaved",
]


def make_row(
    info: dict[str, str],
    res: dict[str, Any],
    probe: BandwidthProbe,
    size: str,
    dtype_name: str,
    n_tensors: int,
    n: int,
    floor_bytes: int,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """One CSV row from :func:`run_case`'s result for one implementation."""
    times = res["times"]
    copy_bw, rmw_bw = probe.bandwidths(res["probe_times"])
    floor_s, floor_rmw_s = floor_bytes / copy_bw, floor_bytes / rmw_bw
    med, p10, p90 = spread(times)
    return dict(
        info,
        impl=res["impl"].label,
        size=size,
        dtype=dtype_name,
        n_params=n,
        n_tensors=n_tensors,
        repeats=len(times),
        median_ms=med * 1e3,
        p10_ms=p10 * 1e3,
        p90_ms=p90 * 1e3,
        floor_bytes=floor_bytes,
        gbps=floor_bytes / med / 1e9,
        copy_gbps=copy_bw / 1e9,
        floor_ms=floor_s * 1e3,
        x_floor=med / floor_s,
        rmw_gbps=rmw_bw / 1e9,
        floor_rmw_ms=floor_rmw_s * 1e3,
        x_floor_rmw=med / floor_rmw_s,
        speedup_vs_authors=None,
        speedup_vs_foreach=None,
        state_mb=res["state_mb"],
        peak_extra_mb=res["peak_extra_mb"],
        **extra,
    )


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """Speed-ups over the authors-style and foreach rows of the same case, in place."""
    for r in rows:
        for base, key in (
            ("authors-style", "speedup_vs_authors"),
            ("foreach", "speedup_vs_foreach"),
        ):
            ref = [
                x
                for x in rows
                if (x["impl"], x["size"], x["dtype"]) == (base, r["size"], r["dtype"])
            ]
            if ref:
                r[key] = ref[0]["median_ms"] / r["median_ms"]


def _speedup(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Head and body of the printed table."""
    head = [
        "implementation",
        "size",
        "dtype",
        "ms (p10-p90)",
        "GB/s",
        "x floor",
        "x floor (add_)",
        "vs authors",
        "vs foreach",
        "extra MB",
    ]
    body = []
    for r in rows:
        mem = float(r["peak_extra_mb"] if r["peak_extra_mb"] is not None else r["state_mb"])
        body.append(
            [
                r["impl"],
                r["size"],
                r["dtype"],
                f"{r['median_ms']:.2f} ({r['p10_ms']:.2f}-{r['p90_ms']:.2f})",
                f"{r['gbps']:.1f}",
                f"{r['x_floor']:.2f}",
                f"{r['x_floor_rmw']:.2f}",
                _speedup(r["speedup_vs_authors"]),
                _speedup(r["speedup_vs_foreach"]),
                f"{mem:.1f}" if mem >= 1 else f"{mem:.3f}",
            ]
        )
    return head, body


def panels(rows: list[dict[str, Any]]) -> list[report.Panel]:
    """One plot panel per case: ms per implementation, the two floors as lines."""
    out = []
    for size, dtype in dict.fromkeys((r["size"], r["dtype"]) for r in rows):
        sub = [r for r in rows if (r["size"], r["dtype"]) == (size, dtype)]
        out.append(
            report.Panel(
                title=f"{size} ({sub[0]['n_params'] / 1e6:.3g}M params) {dtype}",
                labels=[r["impl"] for r in sub],
                medians=[r["median_ms"] for r in sub],
                p10s=[r["p10_ms"] for r in sub],
                p90s=[r["p90_ms"] for r in sub],
                lines=[
                    (sub[0]["floor_ms"], f"floor at copy bw {sub[0]['floor_ms']:.3g} ms", "--"),
                    (
                        sub[0]["floor_rmw_ms"],
                        f"floor at add_ bw {sub[0]['floor_rmw_ms']:.3g} ms",
                        ":",
                    ),
                ],
            )
        )
    return out


# ------------------------------------------------------------------ command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_step",
        description="Time the optimizer overhead of one XSAM step (first_step + second_step, "
        "fixed alpha) for every backend and the baselines, against the 56 B/param "
        "memory-bandwidth floor measured in the same run. With --host-overhead: "
        "the host time per step on tiny tensors (see --host-overhead --help).",
    )
    p.add_argument(
        "--host-overhead",
        action="store_true",
        help="run the host-overhead benchmark (benchmarks.host_overhead) instead",
    )
    p.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu", help="where to time (default: cpu)"
    )
    p.add_argument(
        "--sizes",
        help=f"comma list among {', '.join(SIZES)}. Without --sizes and "
        "--dtypes the device's default cases run (cpu: resnet18 fp32+bf16, 100M fp32; "
        "cuda: resnet18, 125M, 1B in fp32+bf16); with either, their cross product "
        "(missing one defaults to fp32 / resnet18)",
    )
    p.add_argument("--dtypes", help=f"comma list among {', '.join(DTYPES)}")
    p.add_argument(
        "--backends",
        help="comma list of xsam_fast backends and baselines "
        f"({', '.join(BASELINES)}); default: every available backend plus the "
        "baselines (compiled on cuda only)",
    )
    p.add_argument("--repeat", type=int, help="timed steps per case (default: cpu 15, cuda 50)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default: cpu 2, cuda 5)")
    p.add_argument(
        "--budget-s",
        type=float,
        default=30.0,
        help="stop timing one implementation after this many seconds (>= 3 repeats; default: 30)",
    )
    p.add_argument(
        "--copy-mib",
        type=int,
        help="size of each copy-bandwidth buffer (default: cpu 256, cuda 1024)",
    )
    p.add_argument(
        "--nonfinite",
        choices=["warn", "raise", "none"],
        default="warn",
        help="XSAM's nonfinite option (default 'warn', the package default)",
    )
    p.add_argument(
        "--interleave",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="time the implementations round-robin (all built at once) with the copy "
        "probe in every round; default on for cpu (shared, noisy machines), off "
        "for cuda (memory)",
    )
    p.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend of the compiled baseline (default inductor; "
        "another one is labelled compiled:<backend>)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the parameters and gradients (default: 0)"
    )
    out = str(report.RESULTS / "bench")
    p.add_argument("--out", default=out, help=f"output folder (default: {out})")
    p.add_argument("--no-plot", action="store_true", help="write the tables only, no figure")
    return p


def cases_from_args(args: argparse.Namespace) -> list[tuple[str, str]]:
    if args.sizes is None and args.dtypes is None:
        return list(DEFAULT_CASES[args.device])
    sizes = parse_names(args.sizes, SIZES, "resnet18", "size")
    dtypes = parse_names(args.dtypes, DTYPES, "fp32", "dtype")
    return [(s, d) for s in sizes for d in dtypes]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--host-overhead" in argv:
        from . import host_overhead

        return host_overhead.main([a for a in argv if a != "--host-overhead"])
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
    impls = resolve_impls(
        args.backends, args.nonfinite, DEFAULT_BASELINES[device.type], _log, args.compile_backend
    )
    if not impls:
        raise SystemExit("nothing to time")
    for impl in impls:
        if warmup < impl.min_warmup:
            raise SystemExit(
                f"{impl.label} needs --warmup >= {impl.min_warmup} (it compiles in "
                "its first steps, which must not be timed)"
            )
    info = machine_info(device)
    _log(f"xsam-fast bench_step on {describe(info)}")
    _log(f"timing: {', '.join(i.label for i in impls)}")

    copy_mib = args.copy_mib if args.copy_mib is not None else (1024 if cuda else 256)
    probe = BandwidthProbe(device, copy_mib * 2**20)
    interleave = args.interleave if args.interleave is not None else not cuda
    _log(
        f"floor = {FLOOR_ELEMENTS_PER_PARAM} elements/param at the copy bandwidth "
        f"(dst.copy_(src), {copy_mib} MiB buffers, read+write; also dst.add_(src), "
        f"2 reads + 1 write) measured in each case"
        + (", interleaved with the steps" if interleave else " before each implementation")
    )

    rows: list[dict[str, Any]] = []
    for k, (size, dtype_name) in enumerate(cases, 1):
        shapes = SIZES[size]()
        dtype = DTYPES[dtype_name]
        n = numel(shapes)
        floor_bytes = FLOOR_ELEMENTS_PER_PARAM * element_size(dtype) * n
        prefix = f"[{k}/{len(cases)}] {size} {dtype_name}"
        _log(
            f"\n{prefix}: {n:,} parameters in {len(shapes)} tensors; floor traffic "
            f"{floor_bytes / 1e6:.1f} MB per step"
        )
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
        results = run_case(
            runnable,
            master,
            device,
            probe,
            repeat=repeat,
            warmup=warmup,
            budget_s=args.budget_s,
            interleave=interleave,
            progress=lambda msg, prefix=prefix: _log(f"  {prefix} {msg}"),
        )
        del master
        gc.collect()
        for res in results:
            row = make_row(
                info,
                res,
                probe,
                size,
                dtype_name,
                len(shapes),
                n,
                floor_bytes,
                dict(warmup=warmup, nonfinite=args.nonfinite, interleaved=interleave),
            )
            rows.append(row)
            _log(
                f"{prefix} {row['impl']}: median {row['median_ms']:.2f} ms, copy "
                f"{row['copy_gbps']:.1f} GB/s, floor {row['floor_ms']:.2f} ms, "
                f"{row['x_floor']:.2f}x floor; add_ {row['rmw_gbps']:.1f} GB/s, "
                f"{row['x_floor_rmw']:.2f}x that floor"
            )
    del probe
    add_speedups(rows)
    copy_range, rmw_range = (
        (f"{min(r[k] for r in rows):.1f}-{max(r[k] for r in rows):.1f}" if rows else "n/a")
        for k in ("copy_gbps", "rmw_gbps")
    )

    out = report.out_dir(args.out)
    stem = report.stem(out, f"step_{device.type}")
    head, body = table(rows)
    title = (
        f"XSAM step optimizer overhead, {info['machine']}, torch {info['torch']}, {info['date']}"
    )
    floors = (
        f"copy bandwidth {copy_range} GB/s, add_ bandwidth {rmw_range} GB/s over the "
        f"cases; floor = 14 elements/param (56 B fp32, 28 B 16-bit) at the bandwidth "
        f"measured in the case"
    )
    print(f"\n{title}\n{floors}")
    print("\n".join(report.text_table(head, body)))
    written = [
        report.write_csv(stem.with_suffix(".csv"), CSV_COLUMNS, rows),
        report.write_markdown(
            stem.with_suffix(".md"),
            [
                f"{describe(info)}. Date {info['date']}; {floors}; {warmup} warm-up steps, "
                f"up to {repeat} timed"
                + (", implementations interleaved round-robin" if interleave else "")
                + ".",
                "\n".join(report.markdown_table(head, body)),
            ],
        ),
    ]
    if rows and not args.no_plot:
        written.append(
            report.bar_chart(
                stem.with_suffix(".png"),
                panels(rows),
                f"XSAM step overhead, {device.type}: {info['machine']}, torch {info['torch']}, "
                f"{info['date'][:10]}\nfloor: 14 elements/param at the copy ({copy_range} "
                f"GB/s) and add_ ({rmw_range} GB/s) bandwidths measured in the case",
                "ms per step (median, p10-p90)",
            )
        )
    print("\nwritten: " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
