"""Figures of the alpha search, drawn from a search log (matplotlib, Agg backend).

:func:`plot_search_log` draws alpha* over training and the loss-vs-alpha curves
of a log written by :class:`xsam_fast.searchlog.SearchLogger`. matplotlib is an
optional dependency (``pip install "xsam-fast[train]"``), imported when drawing.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from .searchlog import read_search_log


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise RuntimeError(
            'plotting needs matplotlib: pip install matplotlib (or pip install "xsam-fast[train]")'
        ) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pick_evenly(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)``, first and last included."""
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def plot_search_log(
    log: str | os.PathLike | Sequence[dict[str, Any]],
    out: str | os.PathLike,
    *,
    max_curves: int = 8,
    relative: bool = True,
    title: str | None = None,
) -> str:
    """Draw alpha* per search (left) and up to ``max_curves`` loss-vs-alpha curves (right).

    ``log`` is a path or the records themselves. The curves are spread evenly
    over the run, coloured from early (dark) to late (light), each with a star
    at its alpha*. With ``relative`` each curve is drawn minus its own minimum, so
    the shapes stay visible while the loss falls over training. Writes ``out`` (PNG, or any
    format matplotlib knows from the suffix) and returns its path.
    """
    records = read_search_log(log) if isinstance(log, (str, os.PathLike)) else list(log)
    if not records:
        raise ValueError("no search records to plot")
    plt = _pyplot()
    fig, (ax_a, ax_c) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [r["step"] for r in records]
    ax_a.plot(steps, [r["alpha"] for r in records], "o-", ms=3)
    ax_a.axhline(1.0, color="grey", lw=0.8, ls="--", label="SAM (alpha = 1)")
    ax_a.set_xlabel("XSAM step")
    ax_a.set_ylabel("alpha*")
    ax_a.set_title("alpha* over training")
    ax_a.legend(loc="best", fontsize=8)

    cmap = plt.get_cmap("viridis")
    chosen = pick_evenly(len(records), max_curves)
    for j, i in enumerate(chosen):
        r = records[i]
        alphas = [a for a, _ in r["curve"]]
        shift = min(loss for _, loss in r["curve"]) if relative else 0.0
        losses = [loss - shift for _, loss in r["curve"]]
        color = cmap(j / max(1, len(chosen) - 1))
        label = f"step {r['step']}" + (f" (epoch {r['epoch']})" if "epoch" in r else "")
        ax_c.plot(alphas, losses, "o-", ms=2.5, color=color, label=label)
        best = [loss - shift for a, loss in r["curve"] if a == r["alpha"]]
        if best:
            ax_c.plot([r["alpha"]], best, "*", ms=11, color=color, mec="black", mew=0.5)
    ax_c.set_xlabel("alpha")
    ax_c.set_ylabel("L(theta_0 + rho_max v(alpha))" + (" - min over alpha" if relative else ""))
    ax_c.set_title("search curves (star: alpha*)")
    ax_c.legend(loc="best", fontsize=7)
    if title:
        fig.suptitle(title)
    return save_figure(fig, out)


def save_figure(fig: Any, out: str | os.PathLike, dpi: int = 120) -> str:
    """Lay ``fig`` out, write it to ``out`` (its folder made if needed), close it; returns
    the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = os.fspath(out)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out
