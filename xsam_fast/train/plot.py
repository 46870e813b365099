"""Figures of a training job, drawn from its log file alone.

Four panels: test accuracy per epoch (mean over seeds, one line per method,
band = min..max over seeds); the paired differences of final test accuracy
(XSAM - SAM, SAM - SGD: one dot per seed, the mean with its 95 % t interval);
XSAM's alpha* per epoch (one line per seed); the last search curve of each
seed (loss at distance ``rho_max`` versus alpha, chosen alpha marked).
``xsam-fast plot LOG`` redraws it from a saved log.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

from ..plotting import save_figure
from .log import read_log
from .report import COMPARISONS, is_finite, last_epochs, paired_differences


def plot_log(log_path: str | os.PathLike, png_path: str | os.PathLike) -> str:
    """Draw the figure of the log at ``log_path`` into ``png_path`` (PNG); returns the path."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    config, records = read_log(log_path)
    fig, ((ax_acc, ax_diff), (ax_alpha, ax_curve)) = plt.subplots(2, 2, figsize=(12, 8.4))
    _accuracy(ax_acc, records)
    _differences(ax_diff, records)
    _alphas(ax_alpha, records, config)
    _curves(ax_curve, records, config)
    title = f"{config.get('dataset', '?')}: " + ", ".join(
        f"{k}={config[k]}"
        for k in ("model", "label_noise", "epochs", "bs", "lr", "rho", "rho_max")
        if k in config
    )
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, png_path, dpi=110)


def _accuracy(ax: Any, records: list[dict[str, Any]]) -> None:
    by_method: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_method[r["method"]][r["epoch"]].append(100 * r["test_acc"])
    for method, per_epoch in by_method.items():
        epochs = sorted(per_epoch)
        means = [sum(per_epoch[e]) / len(per_epoch[e]) for e in epochs]
        (line,) = ax.plot(epochs, means, marker=".", label=method.upper())
        ax.fill_between(
            epochs,
            [min(per_epoch[e]) for e in epochs],
            [max(per_epoch[e]) for e in epochs],
            color=line.get_color(),
            alpha=0.15,
        )
    ax.set(
        xlabel="epoch",
        ylabel="test accuracy (%)",
        title="test accuracy (mean, min..max over seeds)",
    )
    low = min(100 * r["test_acc"] for r in records)  # the band's lowest point: nothing cut off
    ax.set_ylim(max(0.0, low - max(1.0, 0.05 * (100.0 - low))), 100.2)
    ax.grid(alpha=0.3)
    ax.legend()


def _differences(ax: Any, records: list[dict[str, Any]]) -> None:
    diffs = paired_differences(records)
    ax.set(
        ylabel="difference of final test accuracy (pp)",
        title="paired differences over seeds (mean, 95% t interval)",
    )
    if not diffs:
        _empty(ax, "needs two of the methods " + ", ".join(f"{a}/{b}" for a, b in COMPARISONS))
        return
    for i, d in enumerate(diffs):
        acc_a, acc_b = last_epochs(records, d.a), last_epochs(records, d.b)
        per_seed = [
            100 * (acc_a[s]["test_acc"] - acc_b[s]["test_acc"])
            for s in sorted(set(acc_a) & set(acc_b))
        ]
        ax.plot([i] * len(per_seed), per_seed, "o", color="grey", alpha=0.5, ms=4)
        if d.ci_low is not None:
            ax.errorbar(
                [i + 0.15],
                [d.mean],
                yerr=[[d.mean - d.ci_low], [d.ci_high - d.mean]],
                fmt="D",
                color="C3",
                capsize=6,
                label="mean, 95% interval" if i == 0 else None,
            )
        else:
            ax.plot([i + 0.15], [d.mean], "D", color="C3")
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xticks(range(len(diffs)), [f"{d.a.upper()} - {d.b.upper()}" for d in diffs])
    ax.set_xlim(-0.6, len(diffs) - 0.4)
    ax.grid(alpha=0.3, axis="y")
    if any(d.ci_low is not None for d in diffs):
        ax.legend(fontsize=8)


def _alphas(ax: Any, records: list[dict[str, Any]], config: dict[str, Any]) -> None:
    per_seed: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for r in records:
        if r["method"] == "xsam" and r.get("alpha") is not None and is_finite(r["train_loss"]):
            per_seed[r["seed"]].append((r["epoch"], r["alpha"]))  # diverged epochs left out
    ax.set(xlabel="epoch", ylabel="alpha*", title="XSAM: alpha* per epoch")
    if not per_seed:
        _empty(ax, "no XSAM run in this log")
        return
    for seed, points in sorted(per_seed.items()):
        points.sort()
        ax.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            marker="o",
            ms=3,
            drawstyle="steps-post",
            label=f"seed {seed}",
        )
    ax.axhline(1.0, color="grey", ls="--", lw=1, label="SAM (alpha=1)")
    if "alpha_max" in config:
        ax.set_ylim(-0.05, config["alpha_max"] + 0.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _curves(ax: Any, records: list[dict[str, Any]], config: dict[str, Any]) -> None:
    last: dict[int, dict[str, Any]] = {}
    for r in records:
        if r["method"] == "xsam" and r.get("search_curve"):
            if r["epoch"] >= last.get(r["seed"], {"epoch": -1})["epoch"]:
                last[r["seed"]] = r
    rho_max = config.get("rho_max")
    ax.set(
        xlabel="alpha",
        ylabel="loss at the search point",
        title="XSAM: last search curve" + (f" (rho_max={rho_max})" if rho_max else ""),
    )
    if not last:
        _empty(ax, "no alpha search in this log")
        return
    for seed, r in sorted(last.items()):
        alphas = [p[0] for p in r["search_curve"]]
        losses = [p[1] for p in r["search_curve"]]
        (line,) = ax.plot(alphas, losses, marker=".", label=f"seed {seed} (epoch {r['epoch']})")
        best = min(range(len(alphas)), key=lambda i: abs(alphas[i] - r["alpha"]))  # the pick
        ax.plot([alphas[best]], [losses[best]], marker="*", ms=12, color=line.get_color())
    ax.axvline(1.0, color="grey", ls="--", lw=1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")
