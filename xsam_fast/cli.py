"""The ``xsam-fast`` command (also ``python -m xsam_fast``).

    xsam-fast train [options]     SGD vs SAM vs XSAM (digits with noisy labels by default)
    xsam-fast train --preset cifar10-paper   the XSAM paper's CIFAR recipe (GPU)
    xsam-fast plot [LOG]          redraw the figure of a training log, or of a search log
    xsam-fast diagnose [options]  loss along g0, SAM's g1 and v(alpha*) on the digits CNN
    xsam-fast bench [options]     optimizer-step benchmark (needs a source checkout)

``train``'s flags follow the authors' ``train.py`` (``--rho --rho_max --steps
--alpha --is_dynamic --alpha_max --alpha_delta --epochs --lr --mo --wd --bs
--seed``); ``--seeds N`` runs seeds ``seed .. seed+N-1`` and reports mean ± std
and the paired differences between methods.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Sequence

PROG = "xsam-fast"
TRAIN_EXTRA = 'pip install "xsam-fast[train]"  (scikit-learn, matplotlib, tqdm)'
#: the source checkout holding this package (its benchmarks/ is the step benchmark)
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except None and False: an option whose default is
    None says in its help what it means, and a flag's default is its absence."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _preset_of(argv: Sequence[str]) -> str | None:
    """The value of ``train --preset`` in ``argv`` (None if absent), before full parsing."""
    if not argv or argv[0] != "train":
        return None
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset")
    return pre.parse_known_args(list(argv[1:]))[0].preset


def build_parser(preset: str | None = None) -> argparse.ArgumentParser:
    """The command's parser; ``preset`` (a key of ``PRESETS``) sets the train defaults."""
    from .train.command import add_train_parser

    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "XSAM (eXplicit Sharpness-Aware Minimization) for PyTorch: training demo, plots "
            "and benchmarks."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="{train,plot,diagnose,bench}")

    add_train_parser(sub, preset)

    p = sub.add_parser(
        "plot",
        help="redraw the figure of a training log or a search log",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "log",
        nargs="?",
        default=os.path.join("results", "train", "log.jsonl"),
        help="log.jsonl written by `xsam-fast train`, or a search log written by "
        "xsam_fast.searchlog.SearchLogger (alpha* over training, loss-vs-alpha "
        "curves)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="PNG to write (default: training.png, or search.png for a search log, next to LOG)",
    )

    from .diagnostics import add_arguments as diagnose_arguments

    dg = sub.add_parser(
        "diagnose",
        help="loss at distance rho_max along g0, SAM's g1 and "
        "v(alpha*) at a few epochs of training the digits CNN",
        formatter_class=HelpFormatter,
    )
    diagnose_arguments(dg)

    sub.add_parser(
        "bench",
        add_help=False,
        help="optimizer-step benchmark, benchmarks.bench_step (source checkout only); "
        "`xsam-fast bench --help` for its options",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``xsam-fast``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":  # everything after it belongs to the benchmark
        return _bench(argv[1:])
    parser = build_parser(_preset_of(argv))
    args = parser.parse_args(argv)
    if args.command == "train":
        from .train.command import run

        return run(args)
    if args.command == "plot":
        return _plot(args)
    if args.command == "diagnose":
        return _diagnose(args)
    parser.print_help()
    return 0


def error(command: str, message: str) -> int:
    print(f"{PROG} {command}: error: {message}", file=sys.stderr)
    return 2


def _plot(args: argparse.Namespace) -> int:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return error("plot", f"matplotlib is missing: {TRAIN_EXTRA}")
    from .searchlog import is_search_log

    if os.path.isfile(args.log) and is_search_log(args.log):
        from .plotting import plot_search_log

        out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.log)), "search.png")
        try:
            path = plot_search_log(args.log, out)
        except (OSError, ValueError) as exc:
            return error("plot", str(exc))
        print(f"wrote {path}")
        return 0
    from .train.plot import plot_log
    from .train.runner import PLOT_NAME

    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.log)), PLOT_NAME)
    try:
        path = plot_log(args.log, out)
    except (OSError, ValueError) as exc:
        return error("plot", str(exc))
    print(f"wrote {path}")
    return 0


def _diagnose(args: argparse.Namespace) -> int:
    try:
        import matplotlib  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as exc:
        return error("diagnose", f"{exc.name} is missing: {TRAIN_EXTRA}")
    from .diagnostics import run
    from .train.errors import SetupError

    try:
        return run(args)
    except (SetupError, ValueError) as exc:
        return error("diagnose", str(exc))


def _bench(argv: list[str]) -> int:
    """Hand ``argv`` to ``benchmarks.bench_step.main`` where the harness is importable.

    The harness is not part of the installed package: it is importable only from a
    source checkout, found next to this package (an editable install or a
    ``PYTHONPATH`` naming the checkout) or on ``sys.path``; anywhere else this says
    how to run it and returns 2.
    """
    harness = os.path.join(SOURCE_ROOT, "benchmarks", "bench_step.py")
    if os.path.isfile(harness) and SOURCE_ROOT not in sys.path:
        sys.path.append(SOURCE_ROOT)
    try:
        from benchmarks import bench_step
    except ModuleNotFoundError as exc:
        if exc.name not in ("benchmarks", "benchmarks.bench_step"):
            raise
        command = shlex.join(["python", "-m", "benchmarks.bench_step", *argv])
        return error(
            "bench",
            (
                "the benchmark harness (benchmarks/bench_step.py) ships with the source tree, not "
                "with the installed package: in the root of a source checkout, with xsam-fast "
                f"installed, run `{command}`"
            ),
        )
    return int(bench_step.main(argv) or 0)
