"""XSAM's wall time per epoch over SAM's, in the paper's setting: a CIFAR-sized epoch, alpha
searched once per epoch.

    python -m benchmarks.epoch_overhead            # 391 batches of 128, 10 rounds (~5 min, 1 core)
    python -m benchmarks.epoch_overhead --quick    # a smoke run: 6 batches, 2 rounds

An epoch is 391 mini-batches of 128 synthetic 3x32x32 images (a CIFAR-10
training epoch; images are a class prototype plus noise, so the network learns
and the search curves are those of a training run). The network is a small
CNN on the CPU: a 4x4 stride-4 convolution to 8x8, then the training job's
:class:`~xsam_fast.train.model.SmallCNN`. Methods, all with SGD (momentum 0.9,
weight decay 1e-3, lr 0.05), rho 0.15, rho_max 0.3:

* ``SGD``: one forward/backward per batch (for scale);
* ``SAM``: XSAM with alpha = 1 fixed (two forward/backward passes, no search),
  as the authors run SAM;
* ``XSAM grid`` / ``fibonacci`` / ``coarse``: XSAM searching alpha on the first
  batch of every epoch with that strategy (21, at most 7, at most 11 forward
  passes on the grid 0..2 step 0.1).

Each method keeps its own model and optimizer and trains on through the
rounds. In every round each method runs one whole epoch, the order rotated
from round to round; XSAM's extra time is the ratio of its epoch time to SAM's
epoch in the same round (paired: the two epochs are minutes apart at most, so
a change of the machine's load falls on both), summarised by the median over
rounds. Wall time and the process's CPU time are both reported; with one
thread (the default) the CPU time is the less disturbed by other jobs.

Agreement with the grid is measured on the same curves: every grid search of
the timed XSAM run plus ``--curves`` extra grid searches taken every 4 steps
of a separate (untimed) grid run are replayed through each strategy
(:data:`xsam_fast.search.STRATEGIES`) with the recorded losses.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from typing import Any, Callable

import torch
from torch import Tensor, nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks.machine import describe, load_average, machine_info  # noqa: E402
from benchmarks.search_eval import compare  # noqa: E402
from xsam_fast import XSAM  # noqa: E402
from xsam_fast.search import STRATEGIES  # noqa: E402
from xsam_fast.train.model import SmallCNN  # noqa: E402

HYPER = dict(lr=0.05, momentum=0.9, weight_decay=1e-3)
XSAM_KW = dict(rho=0.15, rho_max=0.3, alpha_max=2.0, alpha_delta=0.1)
#: name -> XSAM search strategy (None: no search); "sgd" is the plain base optimizer
METHODS: dict[str, str | None] = {
    "SGD": None,
    "SAM": None,
    "XSAM grid": "grid",
    "XSAM fibonacci": "fibonacci",
    "XSAM coarse": "coarse",
}
DEFAULT_OUT = os.path.join("results", "epoch_overhead")


class SyntheticImages:
    """``pool`` fixed batches of ``bs`` 3x32x32 float32 images, cycled through an epoch.

    Image = the prototype of its class (smooth: 8x8 noise upsampled) + unit noise.
    """

    def __init__(self, bs: int, pool: int = 16, classes: int = 10, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        protos = nn.functional.interpolate(
            torch.randn(classes, 3, 8, 8, generator=gen),
            scale_factor=4,
            mode="bilinear",
            align_corners=False,
        )
        self.batches = []
        for _ in range(pool):
            y = torch.randint(0, classes, (bs,), generator=gen)
            x = protos[y] + torch.randn(bs, 3, 32, 32, generator=gen)
            self.batches.append((x.contiguous(), y))

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.batches[i % len(self.batches)]


def make_model(width: int, seed: int = 0) -> nn.Module:
    """4x4 stride-4 conv + BN + ReLU to (width, 8, 8), then SmallCNN(width) -> 10 logits."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, width, 4, stride=4, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        SmallCNN(width, 10, width),
    )


class Runner:
    """One method's model and optimizer; :meth:`epoch` trains one timed epoch."""

    def __init__(self, name: str, width: int) -> None:
        self.name, self.model = name, make_model(width)
        self.criterion = nn.CrossEntropyLoss()
        self.searches = METHODS[name] is not None
        if name == "SGD":
            self.opt: torch.optim.Optimizer = torch.optim.SGD(self.model.parameters(), **HYPER)
        else:
            self.opt = XSAM(
                self.model.parameters(),
                torch.optim.SGD,
                model=self.model,
                alpha=1.0,
                search=METHODS[name] or "grid",
                **XSAM_KW,
                **HYPER,
            )

    def step(self, x: Tensor, y: Tensor, search: bool) -> None:
        def loss() -> Tensor:
            return self.criterion(self.model(x), y)

        if isinstance(self.opt, XSAM):

            def closure() -> Tensor:
                self.opt.zero_grad()
                value = loss()
                value.backward()
                return value

            self.opt.step(closure, search_loss=loss, update_alpha=search)
        else:
            self.opt.zero_grad()
            loss().backward()
            self.opt.step()

    def epoch(self, data: SyntheticImages, batches: int) -> tuple[float, float]:
        """(wall s, CPU s) of ``batches`` steps, searching alpha on the first (XSAM)."""
        self.model.train()
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(batches):
            self.step(*data[i], search=self.searches and i == 0)
        return time.perf_counter() - wall, time.process_time() - cpu


def timed_rounds(
    runners: list[Runner],
    data: SyntheticImages,
    batches: int,
    rounds: int,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """One epoch per method per round, the order rotated by one each round."""
    out = []
    for r in range(rounds):
        order = runners[r % len(runners) :] + runners[: r % len(runners)]
        for runner in order:
            wall, cpu = runner.epoch(data, batches)
            out.append(dict(round=r, method=runner.name, wall_s=wall, cpu_s=cpu))
            log(f"round {r + 1}/{rounds} {runner.name:15s} {wall:7.2f} s wall {cpu:7.2f} s CPU")
    return out


def overhead(epochs: list[dict[str, Any]], key: str) -> dict[str, dict[str, float]]:
    """Per method: median epoch time, and its ratio to SAM's in the same round
    (median, min, max over rounds; ``extra_pct`` = 100 (median ratio - 1))."""
    by = {(e["method"], e["round"]): e[key] for e in epochs}
    methods = list(dict.fromkeys(e["method"] for e in epochs))
    rounds = sorted({e["round"] for e in epochs})
    out = {}
    for m in methods:
        ratios = [by[m, r] / by["SAM", r] for r in rounds]
        out[m] = dict(
            median_s=statistics.median(by[m, r] for r in rounds),
            ratio_median=statistics.median(ratios),
            ratio_min=min(ratios),
            ratio_max=max(ratios),
            extra_pct=100 * (statistics.median(ratios) - 1),
        )
    return out


def collect_curves(
    width: int, data: SyntheticImages, n: int, every: int = 4
) -> list[list[tuple[float, float]]]:
    """``n`` grid search curves, one every ``every`` steps of an untimed XSAM grid run."""
    model = make_model(width, seed=1)
    opt = XSAM(
        model.parameters(),
        torch.optim.SGD,
        model=model,
        search="grid",
        search_interval=every,
        **XSAM_KW,
        **HYPER,
    )
    criterion = nn.CrossEntropyLoss()
    i = 0
    while len(opt.search_history) < n:
        x, y = data[i]

        def closure() -> Tensor:
            opt.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            return loss

        opt.step(closure, search_loss=lambda: criterion(model(x), y))
        i += 1
    return [list(map(tuple, h["curve"])) for h in opt.search_history[:n]]


def agreement(curves: list[list[tuple[float, float]]]) -> dict[str, dict[str, Any]]:
    """Every strategy replayed on each grid curve: passes and agreement with the grid
    (:func:`benchmarks.search_eval.compare`'s fields)."""
    records: dict[str, list[dict[str, Any]]] = {s: [] for s in STRATEGIES}
    for curve in curves:
        losses = dict(curve)
        alphas = [a for a, _ in curve]
        for s, strategy in STRATEGIES.items():
            seen: list[float] = []

            def evaluate(batch, seen=seen, losses=losses):
                seen.extend(batch)
                return [losses[a] for a in batch]

            alpha, _ = strategy(alphas, evaluate)
            records[s].append(dict(alpha=alpha, evaluations=len(seen), curve=curve))
    return compare(records)


def search_stats(runners: list[Runner]) -> dict[str, dict[str, float]]:
    """Per searching method of the timed run: mean forward passes and mean wall time of
    its searches (the warm-up's search, which pays one-time costs, left out)."""
    out = {}
    for r in runners:
        history = r.opt.search_history[1:] if isinstance(r.opt, XSAM) else []
        if history:
            out[r.name] = dict(
                passes=statistics.fmean(h["forwards"] for h in history),
                time_s=statistics.fmean(h["time_s"] for h in history),
            )
    return out


def _extra(o: dict[str, float]) -> str:
    return (
        f"{o['extra_pct']:+.2f}% ({100 * (o['ratio_min'] - 1):+.2f}.."
        f"{100 * (o['ratio_max'] - 1):+.2f})"
    )


def table(
    wall: dict[str, dict[str, float]],
    cpu: dict[str, dict[str, float]],
    searches: dict[str, dict[str, float]],
    agree: dict[str, dict[str, Any]],
) -> str:
    """Markdown: per method, epoch times and their paired ratio to SAM's, the search's
    passes and its own time as a share of SAM's epoch, agreement with the grid."""
    lines = [
        "| method | wall s/epoch | wall vs SAM | CPU s/epoch | CPU vs SAM | forward passes "
        "per search | search time / SAM epoch | alpha* = grid's (replayed curves) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in wall:
        strategy, search = METHODS[m], searches.get(m)
        agree_cell = "-"
        if strategy is not None and strategy in agree:
            a = agree[strategy]
            agree_cell = f"{100 * a['exact']:.1f}% ({a['n']} curves)"
        share = (
            "-" if search is None else f"{100 * search['time_s'] / wall['SAM']['median_s']:.2f}%"
        )
        passes = "-" if search is None else f"{search['passes']:.1f}"
        lines.append(
            f"| {m} | {wall[m]['median_s']:.2f} | {_extra(wall[m])} | "
            f"{cpu[m]['median_s']:.2f} | {_extra(cpu[m])} | {passes} | {share} | "
            f"{agree_cell} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--batches", type=int, default=391, help="batches per epoch")
    parser.add_argument("--bs", type=int, default=128, help="images per batch")
    parser.add_argument("--width", type=int, default=16, help="CNN width (channels)")
    parser.add_argument("--rounds", type=int, default=10, help="timed epochs per method")
    parser.add_argument(
        "--curves",
        type=int,
        default=100,
        help="extra grid curves for the agreement of the fast strategies",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="6 batches, 2 rounds, 10 curves")
    parser.add_argument("--out", default=DEFAULT_OUT, help="folder for results.json and table.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.rounds, args.curves = 6, 2, 10
    torch.set_num_threads(args.threads)
    data = SyntheticImages(args.bs)
    runners = [Runner(name, args.width) for name in METHODS]
    for runner in runners:  # untimed warm-up: thread pools, allocator, backend set-up
        runner.epoch(data, 2)
    start_load = load_average()
    started = datetime.datetime.now(datetime.timezone.utc)
    epochs = timed_rounds(runners, data, args.batches, args.rounds, print)
    end_load = load_average()
    grid = next(r for r in runners if r.name == "XSAM grid")
    curves = [list(map(tuple, h["curve"])) for h in grid.opt.search_history[1:]]  # [0]: warm-up
    curves += collect_curves(args.width, data, args.curves)
    wall, cpu = overhead(epochs, "wall_s"), overhead(epochs, "cpu_s")
    agree = agreement(curves)
    md = table(wall, cpu, search_stats(runners), agree)
    params = sum(p.numel() for p in runners[0].model.parameters())
    header = (
        f"{started:%Y-%m-%d %H:%M} UTC; {describe(machine_info(torch.device('cpu')))}; "
        f"epoch = {args.batches} "
        f"batches of {args.bs} synthetic 3x32x32 images; CNN width {args.width} "
        f"({params} parameters); {args.rounds} rounds; load average (1/5/15 min) "
        f"{start_load} at the start, {end_load} at the end"
    )
    print(header)
    print(md)
    print(
        "epoch times: medians over rounds; vs SAM: median (min..max) over rounds of the ratio to "
        "SAM's epoch in the same round; search time: the searches' own wall time"
    )
    print("strategies replayed on the grid curves (passes, exact agreement, within one grid step):")
    for s, a in agree.items():
        print(
            f"  {s}: {a['passes_mean']:.1f} passes, {100 * a['exact']:.1f}% exact, "
            f"{100 * a['within']:.1f}% within one step, mean regret {a['regret_mean']:.4f}"
        )
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(
            dict(
                header=header, epochs=epochs, wall=wall, cpu=cpu, agreement=agree, args=vars(args)
            ),
            f,
            indent=2,
        )
    with open(os.path.join(args.out, "table.md"), "w", encoding="utf-8") as f:
        f.write(header + "\n\n" + md + "\n")
    print(f"wrote {args.out}/results.json and table.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
