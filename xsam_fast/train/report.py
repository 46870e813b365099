"""The summary of a training job: per-method rows, paired differences, alpha* per epoch.

Everything here is computed from the epoch records of the log, so the printed
tables, ``summary.json`` and the figure all show the same numbers.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any, Sequence

from .stats import PairedDifference, mean_std, paired_difference, t_quantile

#: the paired differences the report shows, (a, b) for a - b
COMPARISONS = (("xsam", "sam"), ("sam", "sgd"))


def last_epochs(records: Sequence[dict[str, Any]], method: str) -> dict[int, dict[str, Any]]:
    """The record of the last epoch each seed of ``method`` reached, by seed."""
    last: dict[int, dict[str, Any]] = {}
    for r in records:
        if r["method"] == method and r["epoch"] >= last.get(r["seed"], {"epoch": -1})["epoch"]:
            last[r["seed"]] = r
    return last


def is_finite(value: Any) -> bool:
    """Whether ``value`` (a logged number or None) is a finite number."""
    return value is not None and math.isfinite(value)


def summarize(
    records: Sequence[dict[str, Any]], methods: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """One row per method.

    ``test_acc_mean``/``_std``: final-epoch test accuracy over seeds (sample std);
    ``epoch_time_s``/``_median_s``: training wall time per epoch over seeds and
    epochs; ``images_per_s``: median training throughput; ``alpha_mean``: mean
    alpha over the epochs whose training loss was finite (None for SGD or when
    there is none); ``skipped_steps``/``steps``: totals over seeds at their last
    epoch; ``diverged_seeds``: seeds whose last epoch had a non-finite training
    loss; ``extra_time_vs_sam_pct``: XSAM's extra time per epoch over SAM
    (:func:`_paired_time_ratio`).
    """
    if methods is None:
        methods = list(dict.fromkeys(r["method"] for r in records))
    rows = []
    for method in methods:
        mine = [r for r in records if r["method"] == method]
        if not mine:
            continue
        last = last_epochs(records, method)
        acc_mean, acc_std = mean_std([r["test_acc"] for r in last.values()])
        alphas = [
            r["alpha"] for r in mine if r.get("alpha") is not None and is_finite(r["train_loss"])
        ]
        rows.append(
            dict(
                method=method,
                seeds=len(last),
                epochs=max(r["epoch"] for r in mine),
                test_acc_mean=acc_mean,
                test_acc_std=acc_std,
                epoch_time_s=statistics.fmean(r["epoch_time_s"] for r in mine),
                epoch_time_median_s=statistics.median(r["epoch_time_s"] for r in mine),
                images_per_s=statistics.median(r.get("images_per_s", math.nan) for r in mine),
                alpha_mean=statistics.fmean(alphas) if alphas else None,
                skipped_steps=sum(r.get("skipped_steps", 0) for r in last.values()),
                steps=sum(r.get("steps", 0) for r in last.values()),
                diverged_seeds=sum(not is_finite(r["train_loss"]) for r in last.values()),
                extra_time_vs_sam_pct=None,
            )
        )
    for row in rows:
        if row["method"] == "xsam":
            ratio = _paired_time_ratio(records, "xsam", "sam")
            if ratio is not None:
                row["extra_time_vs_sam_pct"] = 100.0 * (ratio - 1.0)
    return rows


def paired_differences(records: Sequence[dict[str, Any]]) -> list[PairedDifference]:
    """Final-epoch test accuracy differences in percentage points, paired by seed,
    for each of :data:`COMPARISONS` whose two methods are in ``records``."""
    out = []
    for a, b in COMPARISONS:
        acc_a = {s: 100 * r["test_acc"] for s, r in last_epochs(records, a).items()}
        acc_b = {s: 100 * r["test_acc"] for s, r in last_epochs(records, b).items()}
        diff = paired_difference(a, b, acc_a, acc_b)
        if diff is not None:
            out.append(diff)
    return out


def alpha_per_epoch(records: Sequence[dict[str, Any]]) -> dict[int, list[float]]:
    """XSAM's alpha* at the end of each epoch, one value per seed, by epoch; epochs whose
    training loss was not finite (diverged) are left out, as in :func:`summarize`."""
    out: dict[int, list[float]] = defaultdict(list)
    for r in sorted(records, key=lambda r: (r["epoch"], r["seed"])):
        if r["method"] == "xsam" and r.get("alpha") is not None and is_finite(r["train_loss"]):
            out[r["epoch"]].append(r["alpha"])
    return dict(out)


def problems(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One sentence per method that skipped steps or diverged (empty when all went well)."""
    out = []
    for row in rows:
        name = row["method"].upper()
        if row["diverged_seeds"]:
            out.append(
                f"{name}: the training loss was not finite at the end of "
                f"{row['diverged_seeds']} of {row['seeds']} seeds (diverged; its accuracy "
                f"and alpha are not meaningful)"
            )
        if row["skipped_steps"]:
            out.append(
                f"{name}: {row['skipped_steps']} of {row['steps']} steps skipped for a "
                f"non-finite gradient"
            )
    return out


def _paired_time_ratio(
    records: Sequence[dict[str, Any]], method: str, reference: str
) -> float | None:
    """Median over seeds of (median epoch time of ``method`` / that of ``reference``).

    Runs of one seed are adjacent in time, so the ratio within a seed is little
    affected by a slow drift of the machine's load; medians ignore the few epochs
    that a busy shared machine can stretch many times over.
    """

    def per_seed(m: str) -> dict[int, float]:
        times: dict[int, list[float]] = {}
        for r in records:
            if r["method"] == m:
                times.setdefault(r["seed"], []).append(r["epoch_time_s"])
        return {s: statistics.median(t) for s, t in times.items()}

    mine, ref = per_seed(method), per_seed(reference)
    ratios = [mine[s] / ref[s] for s in mine if ref.get(s)]
    return statistics.median(ratios) if ratios else None


def method_label(method: str, interval: int = 1) -> str:
    """``"XSAM"``; ``"XSAM (interval 2)"`` for SAM/XSAM run with ``interval=2``."""
    if interval > 1 and method in ("sam", "xsam"):
        return f"{method.upper()} (interval {interval})"
    return method.upper()


def _markdown(header: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]

    def fmt(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return [fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, lines)]


def format_table(rows: Sequence[dict[str, Any]], *, interval: int = 1) -> str:
    """A plain-text table (also valid Markdown) of :func:`summarize`'s rows.

    ``interval``: the job's ``interval`` (SAM/XSAM's full step every interval-th
    batch), named in their rows and in the note under the table.
    """
    header = (
        "method",
        "test acc % (mean ± std)",
        "s/epoch median",
        "images/s",
        "mean alpha*",
        "skipped steps",
        "time vs SAM",
    )
    lines = []
    for row in rows:
        extra = row["extra_time_vs_sam_pct"]
        acc = f"{100 * row['test_acc_mean']:.2f} ± {100 * row['test_acc_std']:.2f}"
        lines.append(
            (
                method_label(row["method"], interval),
                acc + (" (diverged)" if row["diverged_seeds"] else ""),
                f"{row['epoch_time_median_s']:.3f}",
                f"{row['images_per_s']:.0f}" if is_finite(row["images_per_s"]) else "-",
                "-" if row["alpha_mean"] is None else f"{row['alpha_mean']:.2f}",
                f"{row['skipped_steps']}/{row['steps']}" if row["method"] != "sgd" else "-",
                "-" if extra is None else f"{extra:+.1f}%",
            )
        )
    out = _markdown(header, lines)
    if rows:
        n = rows[0]["seeds"]
        out.append(
            f"test accuracy after the last of {rows[0]['epochs']} epochs, over {n} "
            f"seed{'s' if n != 1 else ''}; s/epoch and images/s: training pass only "
            f"(XSAM's alpha search included); time vs SAM: XSAM's extra time per epoch, "
            f"median over seeds of the ratio of per-seed medians"
        )
        if interval > 1:
            out.append(
                f"interval {interval}: SAM and XSAM take their full step on every "
                f"{_ordinal(interval)} batch and a plain SGD step on the others"
            )
    return "\n".join(out)


def format_differences(diffs: Sequence[PairedDifference]) -> str:
    """The paired differences as a table (percentage points of test accuracy)."""
    if not diffs:
        return ""
    header = ("paired difference", "mean (pp)", "95% interval (t)", "mean / SE", "seeds a>b / a<b")
    lines = []
    for d in diffs:
        interval = "-" if d.ci_low is None else f"[{d.ci_low:+.2f}, {d.ci_high:+.2f}]"
        t = "-" if d.t is None else f"{d.t:+.1f}"
        lines.append(
            (
                f"{d.a.upper()} - {d.b.upper()}",
                f"{d.mean:+.2f}",
                interval,
                t,
                f"{d.wins} / {d.losses}",
            )
        )
    out = _markdown(header, lines)
    n = diffs[0].n
    if n > 1:
        out.append(
            f"final test accuracy, differences paired by seed over {n} seeds; interval: "
            f"mean ± t x SE with t = t(0.975, {n - 1}) = {t_quantile(0.975, n - 1):.2f}; the two "
            f"methods are separated when the interval excludes 0, i.e. when |mean / SE| > t"
        )
    else:
        out.append("final test accuracy, one seed: no interval (--seeds 2 or more)")
    return "\n".join(out)


def format_alphas(alphas: dict[int, list[float]], per_line: int = 10) -> str:
    """XSAM's alpha* per epoch, mean over seeds (min..max when the seeds differ), each with
    at most 6 significant digits (a grid point such as 0.30000000000000004 shows as 0.3)."""
    if not alphas:
        return ""
    cells = []
    for epoch, values in sorted(alphas.items()):
        lo, hi, mean = min(values), max(values), statistics.fmean(values)
        cells.append(f"{epoch}: {mean:g}" + (f" ({lo:g}..{hi:g})" if hi > lo else ""))
    lines = ["XSAM alpha* per epoch (mean over seeds, min..max):"]
    lines += ["  " + ", ".join(cells[i : i + per_line]) for i in range(0, len(cells), per_line)]
    return "\n".join(lines)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
