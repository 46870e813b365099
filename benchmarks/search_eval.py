"""How many forward passes each alpha-search strategy uses, and how often it agrees with the grid.

    python -m benchmarks.search_eval            # full run, writes results/search/
    python -m benchmarks.search_eval --quick    # small sizes (a smoke run), same outputs

Four workloads, each strategy compared with the authors' exhaustive grid
(``"grid"``, 21 points on 0..2) on the same search:

(a) quadratic losses ``0.5 (x - x*)^T H (x - x*) + c`` (H positive definite,
    or indefinite), one live XSAM step per problem and strategy;
(b) random smooth curves on the grid: sums of 1, 2 or 3 Gaussian bumps (1 bump:
    unimodal; 2-3: several local maxima), fed straight to the strategies;
(c) random tanh MLPs (a non-convex loss) with a large search radius, live steps;
(d) the digits CNN of ``xsam-fast train``: searches taken every few steps of a
    short XSAM training run, each strategy run live from the same state.

"Live" means a fresh :class:`xsam_fast.XSAM` with ``search=<strategy>`` takes
the step; its search record gives alpha* and the number of forward passes. A
strategy *misses* when its alpha* is more than one grid step from the grid's.

Then the batched search (``search_batch=K``: K grid points per vectorised
forward) against the sequential one, on the digits CNN and on a bigger MLP, on
the CPU (the report names the CPU, the load, and whether torch saw a GPU).

Outputs (``--out``, default ``results/search``): ``SEARCH_RESULTS_<stamp>.md`` and the
two plots ``search_directions_<stamp>.png`` and ``search_log_<stamp>.png``.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import random
import shutil
import statistics
import time
from typing import Any, Callable

import torch
from torch import nn

from xsam_fast import XSAM
from xsam_fast.coefficients import alpha_grid
from xsam_fast.diagnostics import digits_diagnostic, format_table
from xsam_fast.search import STRATEGIES, ModelLoss

from . import report
from .machine import describe, gpu_name, load_average, machine_info

STRATS = list(STRATEGIES)
GRID = alpha_grid(2.0, 0.1)
DELTA = 0.1


# ---------------------------------------------------------------- one search
def live_search(
    model: nn.Module,
    loss_of: Callable[[nn.Module], torch.Tensor],
    strategy: str,
    search_loss: Callable[[nn.Module], Any] | None = None,
    **kw: Any,
) -> dict[str, Any]:
    """One XSAM step with a search on a copy of ``model``; the search record."""
    m = copy.deepcopy(model)
    opt = XSAM(
        m.parameters(),
        torch.optim.SGD,
        lr=0.0,
        model=m,
        search=strategy,
        **{"rho": 0.15, "rho_max": 0.3, **kw},
    )

    def closure():
        opt.zero_grad()
        loss = loss_of(m)
        loss.backward()
        return loss

    sl = search_loss(m) if search_loss is not None else (lambda: loss_of(m))
    opt.step(closure, search_loss=sl, update_alpha=True)
    return opt.search_history[-1]


def compare(records: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per strategy: passes, agreement with the grid, misses, loss regret."""
    grid = records["grid"]
    out = {}
    for s, recs in records.items():
        passes = [r["evaluations"] for r in recs]
        diffs, regrets = [], []
        for r, g in zip(recs, grid):
            diffs.append(abs(r["alpha"] - g["alpha"]))
            curve = dict((round(a, 9), v) for a, v in g["curve"])
            span = max(curve.values()) - min(curve.values())
            lost = curve[round(g["alpha"], 9)] - curve[round(r["alpha"], 9)]
            regrets.append(lost / span if span > 0 else 0.0)
        misses = [d for d in diffs if d > DELTA + 1e-9]
        miss_regret = [rg for d, rg in zip(diffs, regrets) if d > DELTA + 1e-9]
        out[s] = dict(
            n=len(recs),
            passes_mean=statistics.mean(passes),
            passes_max=max(passes),
            exact=sum(d < 1e-9 for d in diffs) / len(recs),
            within=sum(d <= DELTA + 1e-9 for d in diffs) / len(recs),
            misses=len(misses),
            miss_dalpha_mean=statistics.mean(misses) if misses else 0.0,
            miss_dalpha_max=max(misses) if misses else 0.0,
            regret_mean=statistics.mean(regrets),
            miss_regret_max=max(miss_regret) if miss_regret else 0.0,
        )
    return out


# ---------------------------------------------------------------- workloads
class Quadratic(nn.Module):
    def __init__(self, n: int, indefinite: bool, gen: torch.Generator) -> None:
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
        lam = torch.empty(n, dtype=torch.float64).uniform_(0.1, 10.0, generator=gen)
        if indefinite:
            lam = lam * torch.where(torch.rand(n, generator=gen) < 0.3, -1.0, 1.0).double()
        self.register_buffer("h", q @ torch.diag(lam) @ q.T)
        self.register_buffer("xstar", torch.randn(n, generator=gen, dtype=torch.float64))
        self.x = nn.Parameter(
            self.xstar
            + torch.randn(n, generator=gen, dtype=torch.float64)
            * float(torch.empty(()).uniform_(0.05, 1.0, generator=gen))
        )

    def forward(self) -> torch.Tensor:
        e = self.x - self.xstar
        return 0.5 * e @ self.h @ e + 100.0  # offset: losses > 0 (the grid rule starts at 0)


def workload_quadratic(trials: int, seed: int) -> dict[str, dict[str, Any]]:
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    recs: dict[str, list] = {s: [] for s in STRATS}
    for t in range(trials):
        model = Quadratic(rng.choice([10, 50, 200]), indefinite=(t % 2 == 1), gen=gen)
        rho_max = rng.choice([0.1, 0.3, 1.0, 3.0])
        for s in STRATS:
            recs[s].append(live_search(model, lambda m: m(), s, rho=rho_max / 2, rho_max=rho_max))
    return compare(recs)


def workload_bumps(trials: int, bumps: int, seed: int) -> dict[str, dict[str, Any]]:
    rng = random.Random(seed * 100 + bumps)
    recs: dict[str, list] = {s: [] for s in STRATS}
    for _ in range(trials):
        terms = [
            (rng.uniform(0.05, 1.0), rng.uniform(-0.3, 2.3), rng.uniform(0.1, 0.8))
            for _ in range(bumps)
        ]
        curve = {
            a: 1.0 + sum(h * math.exp(-((a - mu) ** 2) / (2 * sd * sd)) for h, mu, sd in terms)
            for a in GRID
        }
        for s in STRATS:
            n = [0]

            def evaluate(batch, n=n, curve=curve):
                n[0] += len(batch)
                return [curve[a] for a in batch]

            alpha, evaluated = STRATEGIES[s](GRID, evaluate)
            assert n[0] == len(evaluated)
            recs[s].append(dict(alpha=alpha, evaluations=n[0], curve=list(curve.items())))
    return compare(recs)


def workload_mlp(trials: int, seed: int) -> dict[str, dict[str, Any]]:
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    recs: dict[str, list] = {s: [] for s in STRATS}
    for _ in range(trials):
        torch.manual_seed(rng.randrange(1 << 30))
        width = rng.choice([8, 32])
        model = nn.Sequential(
            nn.Linear(5, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1)
        ).double()
        x = torch.randn(64, 5, generator=gen, dtype=torch.float64)
        y = torch.sin(3 * x[:, :1]) + 0.1 * torch.randn(64, 1, generator=gen, dtype=torch.float64)
        rho_max = rng.choice([0.3, 1.0, 3.0])
        for s in STRATS:
            recs[s].append(
                live_search(
                    model, lambda m: ((m(x) - y) ** 2).mean(), s, rho=rho_max / 2, rho_max=rho_max
                )
            )
    return compare(recs)


def digits_model_and_data(seed: int = 0, width: int = 32, bs: int = 64):
    """The digits CNN and its training batches (``xsam_fast.train`` when present)."""
    try:
        from xsam_fast.train.data import load_dataset
        from xsam_fast.train.model import SmallCNN
    except ImportError:  # the training package is not there: an equivalent local copy
        return _local_digits(seed, width, bs)
    data = load_dataset("digits", batch_size=bs)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    return SmallCNN(data.in_channels, data.num_classes, width), lambda: data.train.epoch(gen)


def _local_digits(seed: int, width: int, bs: int):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor((d.images - d.images.mean()) / d.images.std(), dtype=torch.float32)[:, None]
    y = torch.tensor(d.target)
    torch.manual_seed(seed)
    block = lambda i, o: [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]  # noqa: E731
    model = nn.Sequential(
        *block(1, width),
        *block(width, width),
        nn.MaxPool2d(2),
        *block(width, 2 * width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, 10),
    )
    gen = torch.Generator().manual_seed(seed)

    def epoch():
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), bs):
            yield x[order[i : i + bs]], y[order[i : i + bs]]

    return model, epoch


def workload_digits(epochs: int, every: int, seed: int) -> dict[str, dict[str, Any]]:
    model, epoch_batches = digits_model_and_data(seed)
    crit = nn.CrossEntropyLoss()
    opt = XSAM(
        model.parameters(),
        torch.optim.SGD,
        lr=0.05,
        momentum=0.9,
        weight_decay=1e-3,
        rho=0.15,
        rho_max=0.3,
        model=model,
    )
    recs: dict[str, list] = {s: [] for s in STRATS}
    step = 0
    for _ in range(epochs):
        for x, y in epoch_batches():
            model.train()
            if step % every == 0:  # probe every strategy from the current state, same batch
                for s in STRATS:
                    recs[s].append(
                        live_search(
                            model, lambda m: crit(m(x), y), s, lambda m: ModelLoss(m, x, y, crit)
                        )
                    )
                opt.alpha = recs["grid"][-1]["alpha"]  # train on with the grid's alpha

            def closure():
                opt.zero_grad()
                loss = crit(model(x), y)
                loss.backward()
                return loss

            opt.step(closure)
            step += 1
    return compare(recs)


# ---------------------------------------------------------------- batched timing
class SearchTimer:
    """One model, optimizer and batch per configuration; :meth:`once` times one search."""

    def __init__(self, model: nn.Module, x, y, crit, batch: int, strategy: str) -> None:
        self.m = copy.deepcopy(model)
        self.x, self.y, self.crit = x, y, crit
        self.opt = XSAM(
            self.m.parameters(),
            torch.optim.SGD,
            lr=0.0,
            model=self.m,
            search=strategy,
            search_batch=batch,
            rho=0.15,
            rho_max=0.3,
        )
        self.times: list[float] = []
        self.forwards: list[int] = []

    def once(self, record: bool = True) -> None:
        def closure():
            self.opt.zero_grad()
            loss = self.crit(self.m(self.x), self.y)
            loss.backward()
            return loss

        self.opt.step(
            closure, search_loss=ModelLoss(self.m, self.x, self.y, self.crit), update_alpha=True
        )
        if record:
            self.times.append(self.opt.search_history[-1]["time_s"])
            self.forwards.append(self.opt.search_history[-1]["forwards"])


def batched_timing(repeats: int, seed: int, quick: bool) -> list[dict[str, Any]]:
    """Search wall time per configuration; the configurations take turns (round robin), so a
    change of load on a shared machine hits them alike."""
    crit = nn.CrossEntropyLoss()
    torch.manual_seed(seed)
    cnn, batches = digits_model_and_data(seed)
    x, y = next(iter(batches()))
    hidden = 512 if quick else 2048
    mlp = nn.Sequential(
        nn.Linear(784, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 10),
    )
    xm, ym = torch.randn(256, 784), torch.randint(0, 10, (256,))
    configs = []
    for name, model, xx, yy in (
        ("digits CNN (bs 64)", cnn, x, y),
        (f"MLP 784-{hidden}-{hidden}-10 (bs 256)", mlp, xm, ym),
    ):
        for strategy, ks in (("grid", (1, 3, 7, 21)), ("coarse", (1, 6))):
            for k in ks:
                timer = SearchTimer(model, xx, yy, crit, k, strategy)
                timer.once(record=False)  # warm-up
                configs.append(
                    (name, sum(p.numel() for p in model.parameters()), strategy, k, timer)
                )
    for _ in range(repeats):
        for *_, timer in configs:
            timer.once()
    rows, base = [], {}
    for name, params, strategy, k, timer in configs:
        med, low = statistics.median(timer.times), min(timer.times)
        if strategy == "grid" and k == 1:
            base[name] = (med, low)
        rows.append(
            dict(
                model=name,
                params=params,
                strategy=strategy,
                batch=k,
                forwards=statistics.mean(timer.forwards),
                time_ms=1e3 * med,
                min_ms=1e3 * low,
                speedup=base[name][0] / med,
                speedup_min=base[name][1] / low,
            )
        )
    return rows


# ---------------------------------------------------------------- output
def table(title: str, res: dict[str, dict[str, Any]]) -> str:
    head = [
        "strategy",
        "passes mean (max)",
        "% of grid",
        "alpha* = grid",
        "within 1 step",
        "misses",
        "miss mean / max dalpha",
        "mean loss regret",
        "worst miss regret",
    ]
    body = [
        [
            s,
            f"{r['passes_mean']:.2f} ({r['passes_max']})",
            f"{100 * r['passes_mean'] / len(GRID):.0f}%",
            f"{100 * r['exact']:.1f}%",
            f"{100 * r['within']:.1f}%",
            str(r["misses"]),
            f"{r['miss_dalpha_mean']:.2f} / {r['miss_dalpha_max']:.2f}",
            f"{100 * r['regret_mean']:.2f}%",
            f"{100 * r['miss_regret_max']:.1f}%",
        ]
        for s, r in res.items()
    ]
    return "\n".join(
        [f"**{title}** ({res['grid']['n']} searches)", "", *report.markdown_table(head, body)]
    )


def timing_table(rows: list[dict[str, Any]]) -> str:
    head = [
        "model",
        "params",
        "strategy",
        "points per forward",
        "forwards",
        "search ms, best (median)",
        "speed-up vs sequential grid, best (median)",
    ]
    body = [
        [
            r["model"],
            f"{r['params']:,}",
            r["strategy"],
            str(r["batch"]),
            f"{r['forwards']:.1f}",
            f"{r['min_ms']:.1f} ({r['time_ms']:.1f})",
            f"{r['speedup_min']:.2f}x ({r['speedup']:.2f}x)",
        ]
        for r in rows
    ]
    return "\n".join(report.markdown_table(head, body))


def where_timed() -> str:
    """What the batched timing ran on, as measured: the CPU, and whether torch saw a GPU."""
    gpu = gpu_name()
    return "on the CPU; torch saw " + (
        f"a GPU ({gpu}), not used by this timing" if gpu else "no GPU on this machine"
    )


def _pct(res: dict[str, Any], strategy: str, key: str) -> float:
    return 100 * res[strategy][key]


def readme_section(
    summaries: list[tuple[str, dict[str, dict[str, Any]]]],
    timing: list[dict[str, Any]],
    diag_rows: list[dict[str, Any]],
    stamp: str,
    plots: tuple[str, str],
) -> str:
    """A README section built from the measured figures above (nothing typed by hand)."""
    lines = [
        "## Searching alpha",
        "",
        "The search of alpha is XSAM's only extra cost over SAM (21 forward passes on the "
        'grid 0..2 in the authors\' runs). Strategies (`XSAM(..., search=...)`): `"grid"` '
        '(the authors\' exhaustive search, the default), `"fibonacci"` (exact on unimodal '
        'curves, at most 7 passes), `"coarse"` (every 4th point, then a Fibonacci search '
        "around the best; more robust to several bumps, at most 10 passes). Measured by "
        f"`python -m benchmarks.search_eval` ({stamp}): mean forward passes, and how often "
        "alpha* equals the grid's / is within one grid step of it.",
        "",
    ]
    body = []
    for title, res in summaries:
        body.append(
            [title, str(res["grid"]["n"])]
            + [
                f"{res[s]['passes_mean']:.1f} ({100 * res[s]['passes_mean'] / len(GRID):.0f}%), "
                f"{_pct(res, s, 'exact'):.1f}%, {_pct(res, s, 'within'):.1f}%"
                for s in ("fibonacci", "coarse")
            ]
        )
    lines += report.markdown_table(
        [
            "workload",
            "searches",
            "fibonacci: passes, = grid, within 1 step",
            "coarse: passes, = grid, within 1 step",
        ],
        body,
    )
    unimodal = [res for title, res in summaries if "unimodal" in title]
    others = [res for title, res in summaries if "unimodal" not in title]
    coarse = [100 * res["coarse"]["passes_mean"] / len(GRID) for _, res in summaries]
    if unimodal and others:
        lines += [
            "",
            f'On unimodal curves `"fibonacci"` returned the grid\'s alpha* in '
            f"{min(_pct(r, 'fibonacci', 'exact') for r in unimodal):.1f}% of the searches "
            f"with {min(100 * r['fibonacci']['passes_mean'] / len(GRID) for r in unimodal):.0f}"
            f"% of its passes; on the other workloads in "
            f"{min(_pct(r, 'fibonacci', 'exact') for r in others):.1f}-"
            f"{max(_pct(r, 'fibonacci', 'exact') for r in others):.1f}% (it can return a "
            'local maximum). `"coarse"` used '
            f"{min(coarse):.0f}-{max(coarse):.0f}% of the grid's passes and was within one "
            f"grid step in {min(_pct(r, 'coarse', 'within') for r in others):.1f}-"
            f"{max(_pct(r, 'coarse', 'within') for r in others):.1f}% of the searches "
            'with several maxima. Use `"grid"` when exactness matters.',
        ]
    lines += [
        "",
        "Batched search: `XSAM(..., search_batch=K)` evaluates K grid points per forward "
        "pass (`torch.func.vmap` over K stacked parameter sets, K times the parameter "
        "memory) when the search loss is a `xsam_fast.search.ModelLoss` (the authors' "
        "`second_step(model=, inputs=, targets=, criterion=)` builds one; with the closure "
        "API pass `search_loss=ModelLoss(model, x, y, criterion)`); any other callable "
        f"falls back to one point per forward. Search time, timed {where_timed()} (best "
        "of the round-robin repeats, median in brackets):",
        "",
    ]
    lines += report.markdown_table(
        ["model", "strategy", "points per forward", "forwards", "search ms", "vs sequential grid"],
        [
            [
                r["model"],
                r["strategy"],
                str(r["batch"]),
                f"{r['forwards']:.1f}",
                f"{r['min_ms']:.0f} ({r['time_ms']:.0f})",
                f"{r['speedup_min']:.2f}x ({r['speedup']:.2f}x)",
            ]
            for r in timing
        ],
    )
    batched = [r for r in timing if r["strategy"] == "grid" and r["batch"] > 1]
    lines += [
        "",
        "Best-of-repeats speed-up of the batched grid search over the sequential one "
        "on the CPU: "
        + "; ".join(f"{r['model']} K={r['batch']}: {r['speedup_min']:.2f}x" for r in batched)
        + ". On a CPU a vectorised forward over K parameter sets does the same arithmetic "
        "as K forwards and also builds K parameter copies; the option is meant for "
        "accelerators, where a small model's forward is bound by kernel launches, which "
        'this benchmark does not time. The fewer passes of `"fibonacci"`/`"coarse"` '
        "are what saves time on a CPU.",
    ]
    lines += [
        "",
        "Schedule: `search_interval=N` (every N XSAM steps with `step()`), "
        "`update_alpha=(batch_idx == 0)` or `opt.request_search()` at the start of an epoch "
        "(once per epoch, the authors' schedule), or `opt.request_search()` whenever wanted "
        "(the next XSAM step searches). Each search point of the sequential search is written "
        "by the backend's fused `write_point` (the batched search builds its K points with "
        "torch operations).",
        "",
        "Observability: `opt.search_history` and `opt.register_search_hook(fn)` give, per "
        "search, the step, alpha*, the `(alpha, loss)` curve, psi, the norms, the number of "
        "forward passes and the time; `xsam_fast.searchlog.SearchLogger(path)` is such a "
        "hook writing JSON Lines, and `xsam-fast plot path` (or "
        "`xsam_fast.plotting.plot_search_log`) draws alpha* over training and the "
        "loss-vs-alpha curves.",
        "",
        "Diagnostic (`xsam-fast diagnose` or `python -m xsam_fast.diagnostics`): the "
        "mini-batch loss at distance rho_max = 0.3 along v0 (g0's direction), v1 (SAM's g1) "
        "and v(alpha*) while training the digits CNN:",
        "",
        format_table(diag_rows),
        "",
        "v(alpha*) gives a higher loss than SAM's direction by a factor "
        f"{min(r['loss_vstar'] / r['loss_v1'] for r in diag_rows):.3f} to "
        f"{max(r['loss_vstar'] / r['loss_v1'] for r in diag_rows):.3f} at these points, "
        f"and the ascent direction v0 is lower than both (plots: `{plots[0]}`, "
        f"`{plots[1]}`)."
        if all(r["loss_v0"] <= r["loss_v1"] for r in diag_rows)
        else "v(alpha*) / SAM loss ratio: "
        + ", ".join(f"{r['loss_vstar'] / r['loss_v1']:.3f}" for r in diag_rows)
        + ".",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="small sizes and few repeats (a smoke run; the report says so)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(report.RESULTS / "search"), help="output folder")
    args = ap.parse_args(argv)
    q = args.quick
    start = time.perf_counter()
    info = machine_info(torch.device("cpu"))
    results = [
        (
            "(a) quadratic",
            "(a) quadratic losses (half positive definite, half indefinite), "
            "rho_max in {0.1, 0.3, 1, 3}, live",
            workload_quadratic(20 if q else 200, args.seed),
        )
    ]
    for bumps in (1, 2, 3):
        kind = "unimodal" if bumps == 1 else "several local maxima"
        results.append(
            (
                f"(b) {bumps} bump{'s' if bumps > 1 else ''} ({kind})",
                f"(b) random smooth curves, {bumps} Gaussian bump(s) ({kind})",
                workload_bumps(100 if q else 2000, bumps, args.seed),
            )
        )
    results.append(
        (
            "(c) tanh MLPs",
            "(c) random tanh MLPs, MSE, rho_max in {0.3, 1, 3}, live",
            workload_mlp(10 if q else 100, args.seed),
        )
    )
    results.append(
        (
            "(d) digits CNN",
            "(d) digits CNN: every strategy from the same state every "
            "2 steps of a 4-epoch XSAM training run, live"
            if not q
            else "(d) digits CNN",
            workload_digits(1 if q else 4, 10 if q else 2, args.seed),
        )
    )
    sections = [table(long, res) for _, long, res in results]
    for section in sections:
        print(section, "\n")
    repeats = 2 if q else 15
    load_before = load_average()
    timing = batched_timing(repeats, args.seed, q)
    load_after = load_average()
    tt = timing_table(timing)
    print(tt)
    import tempfile

    from xsam_fast.plotting import plot_search_log

    stem = report.stem(report.out_dir(args.out), "SEARCH_RESULTS")
    plots = (
        stem.with_name(stem.name.replace("SEARCH_RESULTS", "search_directions") + ".png"),
        stem.with_name(stem.name.replace("SEARCH_RESULTS", "search_log") + ".png"),
    )
    with tempfile.TemporaryDirectory() as tmp:
        epochs, at = (2, (1, 2)) if q else (6, (1, 2, 4, 6))
        rows = digits_diagnostic(epochs=epochs, at=at, seed=args.seed, out_dir=tmp)
        shutil.copy(os.path.join(tmp, "directions.png"), plots[0])
        plot_search_log(
            os.path.join(tmp, "search.jsonl"),
            str(plots[1]),
            title="digits CNN, one grid search per epoch",
        )
    diag = format_table(rows)
    print(diag)
    elapsed = time.perf_counter() - start
    print(f"\n{elapsed:.0f} s")
    names = (plots[0].name, plots[1].name)
    path = report.write_markdown(
        stem.with_suffix(".md"),
        [
            "# Alpha search: strategies and batched evaluation"
            + (" (--quick: small sizes, a smoke run)" if q else ""),
            f"Measured {info['date']} on {describe(info)}, by `python -m benchmarks.search_eval"
            f"{' --quick' if q else ''}` (seed {args.seed}, {elapsed:.0f} s). "
            "Grid: 0..2 step 0.1 (21 points). "
            "'passes': forward passes of the search (grid points evaluated). 'misses': alpha* more "
            "than one grid step (0.1) from the grid's. 'loss regret': (L(alpha*_grid) - "
            "L(alpha*_strategy)) / (max - min of the grid curve).",
            "## Strategies",
            *sections,
            "## Batched search (`search_batch=K`)",
            f"Wall time of the search alone (its `time_s`), best and median of {repeats} repeats, "
            f"timed {where_timed()}; the configurations take turns (round robin), and the best "
            "time "
            f"is the steadier figure on a loaded machine (load average {load_before} before, "
            f"{load_after} after, on {os.cpu_count()} logical CPUs).",
            tt,
            "## Diagnostic: loss at distance rho_max along g0, SAM's g1 and v(alpha*)",
            f"Digits CNN (`xsam_fast.diagnostics.digits_diagnostic`, {epochs} epochs, grid "
            "search on the "
            f"first batch of each epoch; losses on that batch). Plots: `{names[0]}`, `{names[1]}`.",
            diag,
            "## Ready-to-paste README section",
            readme_section(
                [(short, res) for short, _, res in results], timing, rows, info["date"], names
            ),
        ],
    )
    print(f"wrote {path}, {plots[0]}, {plots[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
