"""The summary of a training job: one row per method, printed as a table."""
from __future__ import annotations

import statistics
from typing import Any, Sequence


def summarize(records: Sequence[dict[str, Any]], methods: Sequence[str] | None = None
              ) -> list[dict[str, Any]]:
    """Per method: final-epoch test accuracy (mean, sample std over seeds), the
    mean and the median over seeds and epochs of the training wall time per epoch,
    the mean alpha over epochs and seeds (None for SGD) and, for XSAM, its extra
    time per epoch over SAM in percent (see :func:`_paired_time_ratio`)."""
    if methods is None:
        methods = list(dict.fromkeys(r["method"] for r in records))
    rows = []
    for method in methods:
        mine = [r for r in records if r["method"] == method]
        if not mine:
            continue
        last_epoch = {}
        for r in mine:  # the last epoch each seed reached
            if r["epoch"] >= last_epoch.get(r["seed"], {"epoch": -1})["epoch"]:
                last_epoch[r["seed"]] = r
        accs = [r["test_acc"] for r in last_epoch.values()]
        alphas = [r["alpha"] for r in mine if r.get("alpha") is not None]
        rows.append(dict(
            method=method, seeds=len(accs), epochs=max(r["epoch"] for r in mine),
            test_acc_mean=statistics.fmean(accs),
            test_acc_std=statistics.stdev(accs) if len(accs) > 1 else 0.0,
            epoch_time_s=statistics.fmean(r["epoch_time_s"] for r in mine),
            epoch_time_median_s=statistics.median(r["epoch_time_s"] for r in mine),
            alpha_mean=statistics.fmean(alphas) if alphas else None,
        ))
    for row in rows:
        row["extra_time_vs_sam_pct"] = None
        if row["method"] == "xsam":
            ratio = _paired_time_ratio(records, "xsam", "sam")
            if ratio is not None:
                row["extra_time_vs_sam_pct"] = 100.0 * (ratio - 1.0)
    return rows


def _paired_time_ratio(records: Sequence[dict[str, Any]], method: str, reference: str
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


def format_table(rows: Sequence[dict[str, Any]], *, interval: int = 1) -> str:
    """A plain-text table (also valid Markdown) of :func:`summarize`'s rows.

    ``interval``: the job's ``interval`` (SAM/XSAM's full step every interval-th
    batch), named in their rows and in the note under the table.
    """
    header = ("method", "test acc % (mean ± std)", "s/epoch mean", "s/epoch median",
              "mean alpha*", "time vs SAM")
    lines = []
    for row in rows:
        extra = row["extra_time_vs_sam_pct"]
        lines.append((
            method_label(row["method"], interval),
            f"{100 * row['test_acc_mean']:.2f} ± {100 * row['test_acc_std']:.2f}",
            f"{row['epoch_time_s']:.3f}",
            f"{row['epoch_time_median_s']:.3f}",
            "-" if row["alpha_mean"] is None else f"{row['alpha_mean']:.2f}",
            "-" if extra is None else f"{extra:+.1f}%",
        ))
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]

    def fmt(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    out = [fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [fmt(line) for line in lines]
    if rows:
        n = rows[0]["seeds"]
        out.append(f"test accuracy after the last of {rows[0]['epochs']} epochs, over {n} "
                   f"seed{'s' if n != 1 else ''}; s/epoch: training pass only (XSAM's alpha "
                   f"search included) over seeds and epochs; time vs SAM: XSAM's extra time per "
                   f"epoch, median over seeds of the ratio of per-seed medians")
        if interval > 1:
            out.append(f"interval {interval}: SAM and XSAM take their full step on every "
                       f"{_ordinal(interval)} batch and a plain SGD step on the others")
    return "\n".join(out)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
