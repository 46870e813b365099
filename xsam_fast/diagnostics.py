"""The paper's central observation, measured on a real model.

Along the great circle through v0 (the ascent direction, g0's for one ascent
step) and v1 (SAM's direction g1), the loss at distance rho_max from theta_0 is
usually largest away from v1: SAM's direction is not the loss-maximising one.
:func:`diagnose_training` trains with XSAM (grid search of alpha once per
epoch, the authors' schedule) and reads, from the search records of the
optimizer (no math of its own), the loss at ``theta_0 + rho_max * u`` for
``u = v0`` (alpha = 0), ``v1`` (alpha = 1) and ``v(alpha*)``, plus the whole
curve. Run it on the digits CNN with::

    python -m xsam_fast.diagnostics --epochs 6 --at 1,2,4,6 --out diag/

(``xsam-fast diagnose`` where the CLI has it); it prints a table and writes
``directions.png``, ``directions.md`` and ``search.jsonl``, refusing a folder that
already holds them unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from .optimizer import XSAM
from .plotting import save_figure
from .argtypes import nonneg_float, positive_int
from .search import ModelLoss
from .searchlog import SearchLogger

Batch = tuple[Tensor, Tensor]
#: the files the diagnostic writes, (key, name)
OUTPUTS = (("plot", "directions.png"), ("table", "directions.md"), ("log", "search.jsonl"))


def direction_losses(record: dict[str, Any]) -> dict[str, float]:
    """``alpha*``, ``psi`` (radians) and the losses along v0, v1 and v(alpha*) from a grid
    search record."""
    curve = {float(a): float(loss) for a, loss in record["curve"]}
    nearest = lambda x: curve[min(curve, key=lambda a: abs(a - x))]  # noqa: E731
    if min(abs(a - 1.0) for a in curve) > 1e-9 or min(curve) != 0.0:
        raise ValueError("the search curve must hold alpha = 0 and alpha = 1 (use the grid search)")
    return dict(
        alpha=float(record["alpha"]),
        psi=float(record["psi"]),
        loss_v0=nearest(0.0),
        loss_v1=nearest(1.0),
        loss_vstar=nearest(float(record["alpha"])),
    )


def diagnose_training(
    model: nn.Module,
    epoch_batches: Callable[[int], Iterable[Batch]],
    *,
    epochs: int,
    at: Sequence[int],
    criterion: nn.Module | None = None,
    log_path: str | os.PathLike | None = None,
    **xsam_kwargs: Any,
) -> list[dict[str, Any]]:
    """Train ``model`` with XSAM for ``epochs`` epochs; one diagnostic row per epoch in ``at``.

    ``epoch_batches(epoch)`` yields the (inputs, targets) batches of an epoch
    (epochs count from 1). Alpha is searched on the first batch of every epoch
    with the grid strategy; a row holds ``epoch``, ``step``, ``loss_theta0``
    (the batch loss at theta_0), ``loss_v0``, ``loss_v1``, ``loss_vstar``,
    ``alpha``, ``psi`` (radians) and ``curve``. ``xsam_kwargs`` go to :class:`XSAM`
    (``lr``, ``momentum``, ``rho``, ``rho_max``...); the search log goes to
    ``log_path`` when given.
    """
    criterion = criterion if criterion is not None else nn.CrossEntropyLoss()
    xsam_kwargs = {"search": "grid", **xsam_kwargs}
    opt = XSAM(model.parameters(), model=model, **xsam_kwargs)
    records: list[dict[str, Any]] = []
    opt.register_search_hook(lambda _opt, record: records.append(record))
    logger = SearchLogger(log_path, append=False) if log_path is not None else None  # a fresh run
    if logger is not None:
        opt.register_search_hook(logger)
    rows = []
    try:
        for epoch in range(1, epochs + 1):
            if logger is not None:
                logger.context["epoch"] = epoch
            model.train()
            for i, (x, y) in enumerate(epoch_batches(epoch)):

                def closure() -> Tensor:
                    opt.zero_grad()
                    loss = criterion(model(x), y)
                    loss.backward()
                    return loss

                if i == 0:
                    opt.request_search()
                loss = opt.step(
                    closure, search_loss=ModelLoss(model, x, y, criterion) if i == 0 else None
                )
                if i == 0 and epoch in at:
                    row = dict(
                        epoch=epoch,
                        step=records[-1]["step"],
                        loss_theta0=float(loss.detach()),
                        **direction_losses(records[-1]),
                        curve=records[-1]["curve"],
                    )
                    rows.append(row)
    finally:
        if logger is not None:
            logger.close()
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a markdown table."""
    head = (
        "| epoch | step | L(theta0) | L(v0) [g0] | L(v1) [SAM] | L(v(alpha*)) | alpha* | "
        "psi (deg) | L(v*) / L(v1) |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r['epoch']} | {r['step']} | {r['loss_theta0']:.4f} | {r['loss_v0']:.4f} | "
            f"{r['loss_v1']:.4f} | {r['loss_vstar']:.4f} | {r['alpha']:g} | "
            f"{r['psi'] * 180 / 3.141592653589793:.1f} | "
            f"{r['loss_vstar'] / r['loss_v1']:.3f} |"
        )
    return "\n".join(lines)


def plot_directions(rows: Sequence[dict[str, Any]], out: str | os.PathLike) -> str:
    """Losses along v0, v1, v(alpha*) per diagnostic point (left) and the full curves (right)."""
    from .plotting import _pyplot

    plt = _pyplot()
    fig, (ax_b, ax_c) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.2
    names = [
        ("loss_theta0", "theta_0"),
        ("loss_v0", "v0 (g0)"),
        ("loss_v1", "v1 (SAM)"),
        ("loss_vstar", "v(alpha*)"),
    ]
    for j, (key, label) in enumerate(names):
        ax_b.bar(
            [i + (j - 1.5) * width for i in range(len(rows))],
            [r[key] for r in rows],
            width,
            label=label,
        )
    ax_b.set_xticks(range(len(rows)), [f"epoch {r['epoch']}" for r in rows])
    ax_b.set_ylabel("mini-batch loss")
    ax_b.set_title("loss at distance rho_max along each direction")
    ax_b.legend(fontsize=8)
    cmap = plt.get_cmap("viridis")
    for i, r in enumerate(rows):
        color = cmap(i / max(1, len(rows) - 1))
        ax_c.plot(
            [a for a, _ in r["curve"]],
            [v - r["loss_v1"] for _, v in r["curve"]],
            "o-",
            ms=2.5,
            color=color,
            label=f"epoch {r['epoch']} (alpha*={r['alpha']:g})",
        )
        ax_c.plot(
            [r["alpha"]],
            [r["loss_vstar"] - r["loss_v1"]],
            "*",
            ms=11,
            color=color,
            mec="black",
            mew=0.5,
        )
    ax_c.axvline(1.0, color="grey", lw=0.8, ls="--")
    ax_c.axhline(0.0, color="grey", lw=0.8, ls="--")
    ax_c.set_xlabel("alpha (0: v0, 1: SAM)")
    ax_c.set_ylabel("L(theta_0 + rho_max v(alpha)) - L(SAM point)")
    ax_c.set_title("loss along the great circle, relative to SAM's")
    ax_c.legend(fontsize=7)
    return save_figure(fig, out)


def digits_diagnostic(
    *,
    epochs: int = 6,
    at: Sequence[int] = (1, 2, 4, 6),
    seed: int = 0,
    out_dir: str | os.PathLike = "diag",
    width: int = 32,
    bs: int = 64,
    lr: float = 0.05,
    rho: float = 0.15,
    rho_max: float = 0.3,
    backend: str = "auto",
) -> list[dict[str, Any]]:
    """:func:`diagnose_training` on the digits CNN of ``xsam-fast train``; writes
    ``directions.png``, ``search.jsonl`` and ``directions.md`` under ``out_dir``."""
    from .train.data import load_dataset
    from .train.model import SmallCNN

    data = load_dataset("digits", batch_size=bs)
    torch.manual_seed(seed)
    model = SmallCNN(data.in_channels, data.num_classes, width)
    generator = torch.Generator().manual_seed(seed)
    os.makedirs(out_dir, exist_ok=True)
    rows = diagnose_training(
        model,
        lambda _e: data.train.epoch(generator),
        epochs=epochs,
        at=at,
        log_path=os.path.join(out_dir, "search.jsonl"),
        lr=lr,
        momentum=0.9,
        weight_decay=1e-3,
        rho=rho,
        rho_max=rho_max,
        backend=backend,
    )
    with open(os.path.join(out_dir, "directions.md"), "w", encoding="utf-8") as f:
        f.write(format_table(rows) + "\n")
    plot_directions(rows, os.path.join(out_dir, "directions.png"))
    return rows


def _epochs(text: str) -> list[int]:
    at = [a.strip() for a in text.split(",") if a.strip()]
    if not at or not all(a.isdigit() and int(a) >= 1 for a in at):
        raise argparse.ArgumentTypeError(f"expected epochs >= 1 separated by commas, got {text!r}")
    return [int(a) for a in at]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The diagnostic's flags (shared with the ``diagnose`` subcommand of the CLI)."""
    from .backends import backend_names

    parser.add_argument("--epochs", type=positive_int, default=6, help="epochs of XSAM training")
    parser.add_argument(
        "--at",
        type=_epochs,
        default="1,2,4,6",
        help="epochs to report (1..--epochs), comma-separated",
    )
    parser.add_argument("--seed", type=int, default=0, help="model and batch-order seed")
    parser.add_argument(
        "--out",
        default=os.path.join("results", "diagnose"),
        help="output folder (table, plot, search log)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the results of an earlier run in --out (refused otherwise)",
    )
    parser.add_argument("--rho", type=nonneg_float, default=0.15, help="total ascent length")
    parser.add_argument(
        "--rho_max",
        type=nonneg_float,
        default=0.3,
        help="distance at which the loss is measured (the search radius)",
    )
    parser.add_argument(
        "--lr", type=nonneg_float, default=0.05, help="SGD learning rate (momentum 0.9)"
    )
    parser.add_argument("--backend", choices=backend_names(), default="auto", help="XSAM backend")


def run(args: argparse.Namespace) -> int:
    """The diagnostic with parsed ``args``. Before any work, raises ValueError for an
    ``--at`` beyond ``--epochs``, and :class:`~xsam_fast.train.errors.SetupError` for an
    ``--out`` that is a file or holds earlier results without ``--overwrite``."""
    from .train.runner import output_paths

    late = [a for a in args.at if a > args.epochs]
    if late:
        raise ValueError(
            f"argument --at: epochs must be in 1..{args.epochs} (--epochs {args.epochs}), "
            f"got {','.join(map(str, late))}"
        )
    paths = output_paths(args.out, overwrite=args.overwrite, outputs=OUTPUTS)
    rows = digits_diagnostic(
        epochs=args.epochs,
        at=args.at,
        seed=args.seed,
        out_dir=args.out,
        lr=args.lr,
        rho=args.rho,
        rho_max=args.rho_max,
        backend=args.backend,
    )
    print(format_table(rows))
    print(f"wrote {', '.join(paths.values())}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from .cli import HelpFormatter
    from .train.errors import SetupError

    parser = argparse.ArgumentParser(
        prog="python -m xsam_fast.diagnostics",
        description=(
            "Loss at distance rho_max along v0 (g0), v1 (SAM) and v(alpha*) on the digits CNN"
        ),
        formatter_class=HelpFormatter,
    )
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except (SetupError, ValueError) as exc:
        parser.error(str(exc))


if __name__ == "__main__":
    raise SystemExit(main())
