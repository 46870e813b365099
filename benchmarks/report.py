"""Report files of the benchmarks: output folder, CSV, text and Markdown tables, bar plots.

Every benchmark writes under its ``--out`` folder (default under ``results/`` in the
current directory), never into the source tree, with file names stamped by date
and time so that runs do not overwrite each other.
"""

from __future__ import annotations

import csv
import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

#: the default output folder of the benchmarks, relative to the current directory
RESULTS = Path("results")


def out_dir(path: str | Path) -> Path:
    """``path`` as a folder that exists."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def stem(out: Path, name: str) -> Path:
    """``out/<name>_<YYYYmmdd-HHMMSS>``, the common stem of one run's files."""
    return out / f"{name}_{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def cell(value: Any) -> Any:
    """A CSV cell: None as the empty string, everything else as is."""
    return "" if value is None else value


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> Path:
    """``rows`` (dicts with at least ``columns``) as a CSV file with a header line."""
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({c: cell(r.get(c)) for c in columns})
    return path


def text_table(head: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a left-aligned plain-text table."""
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [
        fmt.format(*row) for row in body
    ]


def markdown_table(head: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a Markdown table."""
    return ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"] + [
        "| " + " | ".join(row) + " |" for row in body
    ]


def write_markdown(path: Path, sections: Sequence[str]) -> Path:
    """``sections`` (paragraphs or joined table lines) separated by blank lines."""
    path.write_text("\n\n".join(s.rstrip("\n") for s in sections) + "\n", encoding="utf-8")
    return path


@dataclass
class Panel:
    """One panel of :func:`bar_chart`: bars with p10-p90 whiskers and horizontal lines.

    ``medians``, ``p10s`` and ``p90s`` line up with ``labels``; ``lines`` are
    ``(value, label, linestyle)``.
    """

    title: str
    labels: list[str]
    medians: list[float]
    p10s: list[float]
    p90s: list[float]
    lines: list[tuple[float, str, str]]


def bar_chart(path: Path, panels: Sequence[Panel], title: str, ylabel: str) -> Path:
    """A PNG of side-by-side bar panels (one colour per label across panels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(label for p in panels for label in p.labels))
    colors = {name: plt.cm.tab10(i % 10) for i, name in enumerate(names)}
    fig, axes = plt.subplots(
        1, len(panels), figsize=(max(4.0, 3.6 * len(panels)), 4.2), squeeze=False
    )
    for ax, panel in zip(axes[0], panels):
        xs = list(range(len(panel.labels)))
        err = [
            [m - lo for m, lo in zip(panel.medians, panel.p10s)],
            [hi - m for m, hi in zip(panel.medians, panel.p90s)],
        ]
        ax.bar(xs, panel.medians, yerr=err, color=[colors[n] for n in panel.labels], capsize=3)
        for x, m, hi in zip(xs, panel.medians, panel.p90s):
            ax.text(x, hi, f"{m:.3g}", ha="center", va="bottom", fontsize=7)
        for value, label, style in panel.lines:
            ax.axhline(value, color="k", linestyle=style, linewidth=1, label=label)
        ax.set_xticks(xs, panel.labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(panel.title, fontsize=9)
        ax.set_ylabel(ylabel)
        if panel.lines:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
