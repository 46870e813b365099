"""Host overhead of an optimizer step on many tiny tensors, XSAM against torch's own SGD.

    python -m benchmarks.bench_step --host-overhead
    python -m benchmarks.bench_step --host-overhead --counts 3,62,300 --steps 1000

Each parameter set is ``count`` tensors of ``--numel`` elements (default 64), so
that the arithmetic is negligible and a step's time is what the host spends on
it: Python, dispatch, packing, launches. Timed, in one torch thread, per step:

* XSAM (every available backend, default settings: ``nonfinite="warn"``, fused
  base update): ``first_step()`` + ``second_step()`` with fixed alpha. Fresh
  gradient tensors are assigned before each phase, outside the timed region
  (real gradients are new tensors after every backward pass);
* torch's ``SGD(fused=True)`` and ``SGD(foreach=True)``, the peers: ``step()``,
  with fresh gradients assigned the same way;

all with SGD momentum 0.9 and weight decay (``benchmarks.impls``). On a GPU
(``--device cuda``) the timed region is the host's alone: the device is
synchronised between steps, outside it. Where no GPU is present, the Triton
backend runs under ``TRITON_INTERPRET=1`` with CPU tensors and every kernel
launch replaced by a no-op (``benchmarks.triton_launches``): what is timed is
the host side of xsam_fast's Triton path (tables, arguments), without Triton's
own launch cost. The implementations are timed round-robin, a batch of steps
each per round, so that a change of load hits them alike.

Reported: median (p10-p90) microseconds per step for each count, and microseconds
per added tensor, the slope between the two largest counts (62 and 300 by default).
Targets, for XSAM (set for the fused ``cpu`` backend): a step at the largest count
no slower than torch's fused SGD step at that count, and at most 1 us per added
tensor. Outputs (``--out``, default ``results/host_overhead``):
``host_overhead_<device>_<stamp>.csv`` and ``.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from . import report
from .impls import TORCH_SGD, Impl, resolve_impls
from .machine import MACHINE_COLUMNS, describe, machine_info
from .shapes import DTYPES, make_tensors, uniform_shapes
from .timing import spread

#: the slope target, microseconds per added tensor
SLOPE_TARGET_US = 1.0
#: the peer a step at the largest count must not be slower than
PEER = "torch-sgd-fused"

CSV_COLUMNS = [
    *MACHINE_COLUMNS,
    "impl",
    "kernels",
    "n_tensors",
    "numel_per_tensor",
    "dtype",
    "warmup",
    "steps",
    "median_us",
    "p10_us",
    "p90_us",
    "first_median_us",
    "second_median_us",
    "us_per_added_tensor",
    "slope_between",
]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _ints(text: str) -> list[int]:
    values = sorted({int(v) for v in text.split(",") if v.strip()})
    if len(values) < 2 or values[0] < 1:
        raise argparse.ArgumentTypeError(
            f"expected at least two distinct counts >= 1, got {text!r}"
        )
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_step --host-overhead",
        description="Host time per optimizer step on many tiny tensors: XSAM per backend "
        "against torch's SGD(fused=True) and SGD(foreach=True).",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument(
        "--counts",
        type=_ints,
        default=[3, 62, 300],
        help="numbers of tensors (comma list; the slope is taken between the two largest)",
    )
    p.add_argument("--numel", type=int, default=64, help="elements per tensor")
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    p.add_argument(
        "--backends",
        help="comma list of xsam_fast backends and peers "
        f"({', '.join(TORCH_SGD)}); default: every available backend and both peers",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=1000,
        help="timed steps per implementation and count (fewer when --budget-s runs out)",
    )
    p.add_argument("--warmup", type=int, default=20, help="untimed steps first")
    p.add_argument("--batch", type=int, default=20, help="steps per implementation per round")
    p.add_argument(
        "--budget-s",
        type=float,
        default=6.0,
        help="seconds of timing per implementation and count, at most",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads during the run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(report.RESULTS / "host_overhead"), help="output folder")
    return p


# ------------------------------------------------------------------ one implementation


@dataclass
class Stepping:
    """One implementation built on one parameter set, and its timings (seconds)."""

    impl: Impl
    opt: torch.optim.Optimizer
    params: list[Tensor]
    grads: tuple[list[Tensor], list[Tensor]]
    sync: Callable[[], None]
    times: list[float] = field(default_factory=list)
    first: list[float] = field(default_factory=list)
    second: list[float] = field(default_factory=list)

    def _fresh(self, which: int) -> None:
        """New gradient tensors in ``.grad`` (untimed), as a backward pass makes them."""
        for p, g in zip(self.params, self.grads[which]):
            p.grad = g.clone()
        self.sync()

    def step(self, record: bool) -> None:
        """One step, its host time recorded (phases timed apart, gradients untimed)."""
        opt = self.opt
        self._fresh(0)
        if self.impl.kind == "base":
            t0 = time.perf_counter_ns()
            opt.step()
            t = time.perf_counter_ns() - t0
            self.sync()
            if record:
                self.times.append(t * 1e-9)
            return
        t0 = time.perf_counter_ns()
        opt.first_step(0)
        t1 = time.perf_counter_ns() - t0
        self.sync()
        self._fresh(1)
        t0 = time.perf_counter_ns()
        opt.second_step(False)
        t2 = time.perf_counter_ns() - t0
        self.sync()
        if record:
            self.times.append((t1 + t2) * 1e-9)
            self.first.append(t1 * 1e-9)
            self.second.append(t2 * 1e-9)


def _sync(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def time_count(
    impls: list[Impl], count: int, args: argparse.Namespace, device: torch.device
) -> list[Stepping]:
    """Every implementation on ``count`` tensors, timed round-robin."""
    master = make_tensors(uniform_shapes(count, args.numel), DTYPES[args.dtype], device, args.seed)
    runs = []
    for impl in impls:
        params = [torch.nn.Parameter(t.clone()) for t in master[0]]
        run = Stepping(impl, impl.make(params), params, (master[1], master[2]), _sync(device))
        for _ in range(args.warmup):
            run.step(record=False)
        runs.append(run)
    spent = {id(r): 0.0 for r in runs}
    active = list(runs)
    while active:
        for run in list(active):
            started = time.perf_counter()
            for _ in range(min(args.batch, args.steps - len(run.times))):
                run.step(record=True)
            spent[id(run)] += time.perf_counter() - started
            if len(run.times) >= args.steps or spent[id(run)] > args.budget_s:
                active.remove(run)
    return runs


# ------------------------------------------------------------------ report


def _us(values: list[float]) -> float | None:
    return spread(values)[0] * 1e6 if values else None


def rows_of(
    runs_by_count: dict[int, list[Stepping]],
    info: dict[str, str],
    args: argparse.Namespace,
    kernels: dict[str, str],
) -> list[dict[str, Any]]:
    """One row per (implementation, count), with the slope between the two largest counts."""
    counts = sorted(runs_by_count)
    lo, hi = counts[-2], counts[-1]
    rows = []
    for count in counts:
        for run in runs_by_count[count]:
            med, p10, p90 = spread(run.times)
            rows.append(
                dict(
                    info,
                    impl=run.impl.label,
                    kernels=kernels.get(run.impl.label, ""),
                    n_tensors=count,
                    numel_per_tensor=args.numel,
                    dtype=args.dtype,
                    warmup=args.warmup,
                    steps=len(run.times),
                    median_us=med * 1e6,
                    p10_us=p10 * 1e6,
                    p90_us=p90 * 1e6,
                    first_median_us=_us(run.first),
                    second_median_us=_us(run.second),
                    us_per_added_tensor=None,
                    slope_between=f"{lo}-{hi}",
                )
            )
    for label in dict.fromkeys(r["impl"] for r in rows):
        at = {r["n_tensors"]: r for r in rows if r["impl"] == label}
        slope = (at[hi]["median_us"] - at[lo]["median_us"]) / (hi - lo)
        for r in at.values():
            r["us_per_added_tensor"] = slope
    return rows


def table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """One line per implementation: us per step at each count, and the slope."""
    counts = sorted({r["n_tensors"] for r in rows})
    head = (
        ["implementation"]
        + [f"{c} tensors: us/step (p10-p90)" for c in counts]
        + [f"us per added tensor ({rows[0]['slope_between']})"]
    )
    body = []
    for label in dict.fromkeys(r["impl"] for r in rows):
        at = {r["n_tensors"]: r for r in rows if r["impl"] == label}
        name = label + (f" ({at[counts[0]]['kernels']})" if at[counts[0]]["kernels"] else "")
        body.append(
            [name]
            + [
                f"{at[c]['median_us']:.1f} ({at[c]['p10_us']:.1f}-{at[c]['p90_us']:.1f})"
                for c in counts
            ]
            + [f"{at[counts[-1]]['us_per_added_tensor']:.3f}"]
        )
    return head, body


def verdicts(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The two targets for every XSAM row: step at the largest count vs torch's fused SGD,
    and the slope."""
    top = max(r["n_tensors"] for r in rows)
    peer = [r for r in rows if r["impl"] == PEER and r["n_tensors"] == top]
    head = ["implementation", "target", "measured", "met?"]
    body = []
    for r in rows:
        if not r["impl"].startswith("xsam:") or r["n_tensors"] != top:
            continue
        if peer:
            ok = r["median_us"] <= peer[0]["median_us"]
            body.append(
                [
                    r["impl"],
                    f"step at {top} tensors <= {PEER} at {top}",
                    f"{r['median_us']:.1f} us vs {peer[0]['median_us']:.1f} us",
                    "yes" if ok else "no",
                ]
            )
        else:
            body.append(
                [
                    r["impl"],
                    f"step at {top} tensors <= {PEER} at {top}",
                    f"{PEER} not measured",
                    "n/a",
                ]
            )
        slope = r["us_per_added_tensor"]
        body.append(
            [
                r["impl"],
                f"<= {SLOPE_TARGET_US:g} us per added tensor ({r['slope_between']})",
                f"{slope:.3f} us",
                "yes" if slope <= SLOPE_TARGET_US else "no",
            ]
        )
    return head, body


# ------------------------------------------------------------------ main


def _triton_setup(device: torch.device) -> tuple[contextlib.AbstractContextManager, str]:
    """The context the steps run in, and how the Triton kernels run there."""
    if device.type == "cuda":
        return contextlib.nullcontext(), ""
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before xsam_fast loads the backend
    import xsam_fast

    if "triton" not in xsam_fast.available_backends():
        return contextlib.nullcontext(), ""
    from .triton_launches import KernelLaunches

    return KernelLaunches(run_kernels=False), "kernels no-op"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible to torch")
    if min(args.steps, args.numel, args.batch, args.threads) < 1 or args.warmup < 0:
        raise SystemExit("--steps, --numel, --batch and --threads must be >= 1, --warmup >= 0")
    context, triton_mode = _triton_setup(device)
    impls = resolve_impls(args.backends, "warn", list(TORCH_SGD), _log)
    if not impls:
        raise SystemExit("nothing to time")
    dtype = DTYPES[args.dtype]
    for impl in list(impls):
        ok, why = impl.supports(device, dtype)
        if not ok:
            _log(f"skipping {impl.label}: {why}")
            impls.remove(impl)
    kernels = {"xsam:triton": triton_mode} if triton_mode else {}
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        info = machine_info(device)
        _log(f"host overhead on {describe(info)}")
        _log(
            f"timing {', '.join(i.label for i in impls)} on {args.counts} tensors of "
            f"{args.numel} {args.dtype} elements"
        )
        runs_by_count = {}
        with context:
            for count in args.counts:
                runs_by_count[count] = time_count(impls, count, args, device)
                _log(
                    f"{count} tensors: "
                    + ", ".join(
                        f"{r.impl.label} {spread(r.times)[0] * 1e6:.1f} us ({len(r.times)} steps)"
                        for r in runs_by_count[count]
                    )
                )
        info_end = machine_info(device)
    finally:
        torch.set_num_threads(threads)
    rows = rows_of(runs_by_count, info, args, kernels)
    head, body = table(rows)
    vhead, vbody = verdicts(rows)
    intro = (
        f"Host time per optimizer step, {args.numel}-element {args.dtype} tensors on "
        f"{device.type}, {args.threads} torch thread(s), median (p10-p90) over up to "
        f"{args.steps} steps after {args.warmup} warm-up steps, implementations "
        f"round-robin; XSAM: first_step + second_step (fixed alpha), torch: step(). "
        f"Load average at the end: {info_end['load']}."
    )
    targets = (
        f"Targets (set for the fused cpu backend, default settings): a step at "
        f"{max(args.counts)} tensors no slower than {PEER}, at most "
        f"{SLOPE_TARGET_US:g} us per added tensor."
    )
    print(f"\n{describe(info)}\n{intro}\n")
    print("\n".join(report.text_table(head, body)))
    print(f"\n{targets}")
    print("\n".join(report.text_table(vhead, vbody)) if vbody else "(no XSAM row measured)")
    out = report.out_dir(args.out)
    stem = report.stem(out, f"host_overhead_{device.type}")
    written = [
        report.write_csv(stem.with_suffix(".csv"), CSV_COLUMNS, rows),
        report.write_markdown(
            stem.with_suffix(".md"),
            [
                f"{describe(info)}.",
                intro,
                "\n".join(report.markdown_table(head, body)),
                targets,
                "\n".join(report.markdown_table(vhead, vbody)),
            ],
        ),
    ]
    print("\nwritten: " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
