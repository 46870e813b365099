"""Speed against accuracy of ``interval=k`` on the digits job of ``xsam-fast train``.

    python -m benchmarks.interval_tradeoff             # writes results/interval/
    python -m benchmarks.interval_tradeoff --quick     # 2 seeds x 2 epochs, prints only

With ``interval=k`` SAM/XSAM take their full step (``steps + 1`` forward/backward
passes, plus XSAM's alpha search once per epoch) on every k-th batch and a plain
SGD step (one forward/backward) on the others. For every seed this trains SGD
once (the ``k = infinity`` end) and each method at each interval, from the same
initialisation and batch order (:func:`xsam_fast.train.loop.train_run`: the job's
CNN, cosine schedule and hyper-parameters). Runs of one seed are adjacent in
time, so a drift of the machine's load falls on all of them alike; times are
compared as the median over seeds of per-seed ratios of median epoch times.

Speed is measured as the CPU time of the process per epoch (training pass only),
with one torch thread by default: on a shared machine the wall time of an epoch
depends on what else runs, its CPU time much less. Wall times are reported too.

Output: the Markdown report ``--out`` (default
``results/interval/INTERVAL_RESULTS_<stamp>.md``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch

from xsam_fast.train.data import load_dataset
from xsam_fast.train.loop import TrainConfig, train_run, warm_up

from . import report
from .machine import describe, load_average, machine_info


def _ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"expected integers >= 1 separated by commas, got {text!r}"
        )
    return values


def run(
    cfg: TrainConfig,
    methods: Sequence[str],
    intervals: Sequence[int],
    seeds: Sequence[int],
    verbose: bool = True,
) -> list[dict[str, Any]]:
    """One record per (method, interval, seed): final accuracy and loss, epoch times, passes."""
    data = load_dataset("digits", batch_size=cfg.bs)
    runs = [("sgd", 1)] + [(m, k) for m in methods for k in intervals]
    warm_up(data, cfg, ["sgd", *methods])
    out = []
    for seed in seeds:
        for method, k in runs:
            c = replace(cfg, interval=k)
            records = list(train_run(method, seed, data, c))
            last = records[-1]
            n = cfg.epochs * len(data.train)
            full = 0 if method == "sgd" else -(-n // k)  # calls 0, k, 2k, ... take the full step
            passes = full * (cfg.steps + 1) + (n - full)
            out.append(
                dict(
                    method=method,
                    interval=None if method == "sgd" else k,
                    seed=seed,
                    test_acc=last["test_acc"],
                    train_loss=last["train_loss"],
                    epoch_times=[r["epoch_cpu_s"] for r in records],
                    epoch_walls=[r["epoch_time_s"] for r in records],
                    passes_per_batch=passes / n,
                    alpha=[r["alpha"] for r in records],
                )
            )
            if verbose:
                r = out[-1]
                print(
                    f"seed {seed} {label(r):<18} test acc {100 * r['test_acc']:6.2f}%  "
                    f"median {statistics.median(r['epoch_times']):.3f} CPU s/epoch "
                    f"({statistics.median(r['epoch_walls']):.3f} s wall)",
                    flush=True,
                )
    return out


def label(r: dict[str, Any]) -> str:
    return "SGD" if r["method"] == "sgd" else f"{r['method'].upper()} interval {r['interval']}"


def summarize(results: list[dict[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    """Rows of the table: accuracy mean ± std over seeds, epoch times, time vs interval 1."""

    def median_time(r: dict[str, Any]) -> float:
        return statistics.median(r["epoch_times"])

    keys = list(dict.fromkeys((r["method"], r["interval"]) for r in results))
    rows = []
    for method, k in keys:
        mine = [r for r in results if (r["method"], r["interval"]) == (method, k)]
        accs = [r["test_acc"] for r in mine]
        row = dict(
            label=label(mine[0]),
            method=method,
            interval=k,
            seeds=len(mine),
            acc_mean=statistics.fmean(accs),
            acc_std=statistics.stdev(accs) if len(accs) > 1 else 0.0,
            loss_mean=statistics.fmean(r["train_loss"] for r in mine),
            time_median=statistics.median(t for r in mine for t in r["epoch_times"]),
            time_mean=statistics.fmean(t for r in mine for t in r["epoch_times"]),
            wall_median=statistics.median(t for r in mine for t in r["epoch_walls"]),
            passes=mine[0]["passes_per_batch"],
            vs_one=None,
        )
        base = {
            r["seed"]: median_time(r)
            for r in results
            if r["method"] == methods[0] and r["interval"] == 1
        }
        ratios = [median_time(r) / base[r["seed"]] for r in mine if base.get(r["seed"])]
        if ratios:
            row["vs_one"] = statistics.median(ratios)
        rows.append(row)
    return rows


def format_rows(rows: list[dict[str, Any]], reference: str) -> str:
    head = [
        "run",
        "test acc % (mean ± std)",
        "final train loss",
        "CPU s/epoch median",
        "CPU s/epoch mean",
        f"CPU time vs {reference} interval 1",
        "wall s/epoch median",
        "fwd/bwd passes per batch",
    ]
    body = [
        [
            r["label"],
            f"{100 * r['acc_mean']:.2f} ± {100 * r['acc_std']:.2f}",
            f"{r['loss_mean']:.4f}",
            f"{r['time_median']:.3f}",
            f"{r['time_mean']:.3f}",
            "-" if r["vs_one"] is None else f"{r['vs_one']:.2f}x",
            f"{r['wall_median']:.3f}",
            f"{r['passes']:.2f}",
        ]
        for r in rows
    ]
    return "\n".join(report.markdown_table(head, body))


def render(
    rows: list[dict[str, Any]],
    results: list[dict[str, Any]],
    cfg: TrainConfig,
    methods: Sequence[str],
    argv: Sequence[str],
    info: dict[str, str],
    wall: float,
    load_end: str,
) -> str:
    seeds = sorted({r["seed"] for r in results})
    per_seed = report.markdown_table(
        ["run", *(f"seed {s}" for s in seeds)],
        [
            [
                row["label"],
                *(
                    f"{100 * r['test_acc']:.2f}"
                    for r in sorted(
                        (r for r in results if label(r) == row["label"]), key=lambda r: r["seed"]
                    )
                ),
            ]
            for row in rows
        ],
    )
    return "\n".join(
        [
            "# interval=k: speed against accuracy on the digits job",
            "",
            f"Measured {info['date']} on {describe(info)} (that load average at the "
            f"start, {load_end} at the end); {wall:.0f} s in all.",
            "",
            f"Command: `{' '.join(['python -m benchmarks.interval_tradeoff', *argv])}`",
            "",
            f"Job: scikit-learn's digits (1437 train / 360 test images), the CNN of `xsam-fast "
            f"train` (width {cfg.width}), SGD lr {cfg.lr} momentum {cfg.momentum} wd {cfg.wd}, "
            "cosine "
            f"schedule over {cfg.epochs} epochs, batch {cfg.bs}, rho {cfg.rho}, rho_max "
            f"{cfg.rho_max}, steps {cfg.steps}; XSAM searches alpha (grid 0..{cfg.alpha_max} step "
            f"{cfg.alpha_delta}) at the first full step of every epoch, SAM is alpha = 1. "
            f"Backend {cfg.backend}.",
            "",
            format_rows(rows, methods[0].upper()),
            "",
            f"Test accuracy after the last epoch, mean ± sample std over {rows[0]['seeds']} seeds; "
            "final train loss: mean over seeds of the last epoch's mean loss (at the batches' "
            "starting points); CPU s/epoch: CPU time of the process for the training pass only "
            "(search included, evaluation excluded), over seeds and epochs; wall s/epoch: the "
            f"same span's wall time; CPU time vs {methods[0].upper()} interval 1: median over "
            "seeds of the ratio of per-seed median epoch times (every row against that run). "
            "Passes per batch are counted from the schedule (full steps at calls 0, k, "
            f"2k, ... of the run: {cfg.steps + 1} forward/backward passes each, plain steps one), "
            "without the search's forward-only passes.",
            "",
            "Per seed (test accuracy %):",
            "",
            *per_seed,
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    d = TrainConfig()
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--intervals", type=_ints, default=[1, 2, 5])
    parser.add_argument(
        "--methods",
        default="xsam,sam",
        help="comma-separated subset of sam,xsam; the first is the time reference",
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--width", type=int, default=d.width)
    parser.add_argument("--bs", type=int, default=d.bs)
    parser.add_argument("--backend", default=d.backend)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (CPU time is clean with one: no spinning workers)",
    )
    parser.add_argument(
        "--out",
        help="markdown file to write (default results/interval/INTERVAL_RESULTS_<stamp>.md)",
    )
    parser.add_argument("--quick", action="store_true", help="2 seeds x 2 epochs; print only")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods or any(m not in ("sam", "xsam") for m in methods):
        parser.error(f"--methods: expected a subset of sam,xsam, got {args.methods!r}")
    if args.quick:
        args.seeds, args.epochs = 2, 2
    torch.set_num_threads(args.threads)
    cfg = TrainConfig(epochs=args.epochs, bs=args.bs, width=args.width, backend=args.backend)
    info, start = machine_info(torch.device("cpu")), time.perf_counter()
    results = run(cfg, methods, args.intervals, list(range(args.seeds)))
    wall, load_end = time.perf_counter() - start, load_average()
    rows = summarize(results, methods)
    print(format_rows(rows, methods[0].upper()))
    if not args.quick:
        out = (
            report.stem(
                report.out_dir(report.RESULTS / "interval"), "INTERVAL_RESULTS"
            ).with_suffix(".md")
            if args.out is None
            else report.out_dir(Path(args.out).parent) / Path(args.out).name
        )
        out.write_text(
            render(rows, results, cfg, methods, argv, info, wall, load_end), encoding="utf-8"
        )
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
