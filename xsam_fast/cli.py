"""The ``xsam-fast`` command (also ``python -m xsam_fast``).

    xsam-fast train [options]     SGD vs SAM vs XSAM on a small CNN (digits by default)
    xsam-fast plot [LOG]          redraw the figure of a training log, or of a search log
    xsam-fast diagnose [options]  loss along g0, SAM's g1 and v(alpha*) on the digits CNN
    xsam-fast bench [options]     optimizer-step benchmark (needs a source checkout)

``train``'s flags follow the authors' ``train.py`` (``--rho --rho_max --steps
--alpha --is_dynamic --alpha_max --alpha_delta --epochs --lr --mo --wd --bs
--seed``); ``--seeds N`` runs seeds ``seed .. seed+N-1`` and reports mean ± std.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Sequence

PROG = "xsam-fast"
TRAIN_EXTRA = 'pip install "xsam-fast[train]"  (scikit-learn, matplotlib, tqdm)'


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _methods(text: str) -> list[str]:
    from .train.loop import METHODS

    methods = [m.strip().lower() for m in text.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if not methods or bad or len(set(methods)) != len(methods):
        raise argparse.ArgumentTypeError(
            f"expected distinct names from {','.join(METHODS)} separated by commas, got {text!r}")
    return methods


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def build_parser() -> argparse.ArgumentParser:
    from .backends import backend_names
    from .train.data import DATASETS
    from .train.loop import TrainConfig

    d = TrainConfig()
    parser = argparse.ArgumentParser(prog=PROG, description=(
        "XSAM (eXplicit Sharpness-Aware Minimization) for PyTorch: training demo, plots "
        "and benchmarks."))
    sub = parser.add_subparsers(dest="command", metavar="{train,plot,diagnose,bench}")

    t = sub.add_parser("train", help="train a small CNN with SGD, SAM and XSAM; print a table",
                       description=(
                           "Train a small CNN (BatchNorm) with SGD, SAM (XSAM with alpha=1) and "
                           "XSAM (alpha searched on the first batch of every epoch) under the same "
                           "seeds, epochs and cosine learning-rate schedule; print test accuracy "
                           "(mean ± std over seeds) and time per epoch; write a log, a CSV and a "
                           "plot to --out."),
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = t.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default="digits",
                   help="digits: scikit-learn's bundled 8x8 digits (no download); cifar10/100 "
                        "need torchvision and the data under --data_dir")
    g.add_argument("--data_dir", default="data", help="where the CIFAR data lives")
    g.add_argument("--download", action="store_true",
                   help="let torchvision download CIFAR into --data_dir if missing")
    g.add_argument("--split_seed", type=int, default=0,
                   help="seed of the digits train/test split (the same for every run)")
    g.add_argument("--num_workers", type=int, default=0, help="DataLoader workers (CIFAR)")

    g = t.add_argument_group("optimisation (names as in the authors' train.py)")
    g.add_argument("--epochs", type=_positive_int, default=d.epochs)
    g.add_argument("--bs", type=_positive_int, default=d.bs, help="batch size")
    g.add_argument("--lr", type=float, default=d.lr, help="initial learning rate (cosine schedule)")
    g.add_argument("--momentum", "--mo", dest="momentum", type=float, default=d.momentum)
    g.add_argument("--wd", type=float, default=d.wd, help="weight decay")
    g.add_argument("--rho", type=float, default=d.rho, help="total length of the gradient ascent")
    g.add_argument("--rho_max", type=float, default=d.rho_max,
                   help="distance at which the alpha search evaluates the loss")
    g.add_argument("--steps", type=_positive_int, default=d.steps, help="ascent steps")
    g.add_argument("--eps", type=float, default=d.eps)
    g.add_argument("--alpha", type=float, default=d.alpha,
                   help="XSAM's alpha with --no-is_dynamic (SAM always uses 1)")
    g.add_argument("--is_dynamic", action=argparse.BooleanOptionalAction, default=d.is_dynamic,
                   help="XSAM searches alpha on the first batch of every epoch")
    g.add_argument("--alpha_max", type=float, default=d.alpha_max, help="end of the alpha grid")
    g.add_argument("--alpha_delta", type=float, default=d.alpha_delta, help="alpha grid step")
    g.add_argument("--width", type=_positive_int, default=d.width, help="CNN width (channels)")
    g.add_argument("--interval", type=_positive_int, default=d.interval,
                   help="SAM and XSAM take their full step on every interval-th batch and a "
                        "plain SGD step (one forward/backward) on the others")

    g = t.add_argument_group("job")
    g.add_argument("--methods", type=_methods, default=["sgd", "sam", "xsam"],
                   help="comma-separated subset of sgd,sam,xsam")
    g.add_argument("--seed", type=int, default=0, help="first seed")
    g.add_argument("--seeds", type=_positive_int, default=5,
                   help="number of seeds (seed, seed+1, ...); the table gives mean ± std")
    g.add_argument("--backend", choices=backend_names(), default=d.backend,
                   help="XSAM backend (see xsam_fast.available_backends())")
    g.add_argument("--threads", type=_positive_int, default=None,
                   help="torch CPU threads (default: every core this process may use)")
    g.add_argument("--out", default=os.path.join("results", "train"), help="output folder")
    g.add_argument("--no_progress", action="store_true", help="no progress bars")

    p = sub.add_parser("plot", help="redraw the figure of a training log or a search log",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("log", nargs="?", default=os.path.join("results", "train", "log.jsonl"),
                   help="log.jsonl written by `xsam-fast train`, or a search log written by "
                        "xsam_fast.searchlog.SearchLogger (alpha* over training, loss-vs-alpha "
                        "curves)")
    p.add_argument("--out", default=None, help="PNG to write (default: training.png, or "
                                               "search.png for a search log, next to LOG)")

    from .diagnostics import add_arguments as diagnose_arguments

    dg = sub.add_parser("diagnose", help="loss at distance rho_max along g0, SAM's g1 and "
                                         "v(alpha*) at a few epochs of training the digits CNN",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    diagnose_arguments(dg)

    sub.add_parser("bench", add_help=False,
                   help="optimizer-step benchmark, benchmarks.bench_step (source checkout only); "
                        "`xsam-fast bench --help` for its options")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``xsam-fast``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":  # everything after it belongs to the benchmark
        return _bench(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train":
        return _train(args)
    if args.command == "plot":
        return _plot(args)
    if args.command == "diagnose":
        return _diagnose(args)
    parser.print_help()
    return 0


def _error(command: str, message: str) -> int:
    print(f"{PROG} {command}: error: {message}", file=sys.stderr)
    return 2


def _train(args: argparse.Namespace) -> int:
    import torch

    from .train.data import DatasetUnavailable, load_dataset
    from .train.loop import TrainConfig
    from .train.report import format_table

    try:
        import matplotlib  # noqa: F401
        import tqdm  # noqa: F401
    except ImportError as exc:
        return _error("train", f"{exc.name} is missing: {TRAIN_EXTRA}")
    threads = args.threads or _cores()
    torch.set_num_threads(threads)
    cfg = TrainConfig(epochs=args.epochs, bs=args.bs, lr=args.lr, momentum=args.momentum,
                      wd=args.wd, rho=args.rho, rho_max=args.rho_max, steps=args.steps,
                      alpha=args.alpha, is_dynamic=args.is_dynamic, alpha_max=args.alpha_max,
                      alpha_delta=args.alpha_delta, eps=args.eps, backend=args.backend,
                      width=args.width, interval=args.interval)
    try:
        data = load_dataset(args.dataset, batch_size=args.bs, split_seed=args.split_seed,
                            data_dir=args.data_dir, download=args.download,
                            num_workers=args.num_workers)
    except DatasetUnavailable as exc:
        return _error("train", str(exc))
    seeds = list(range(args.seed, args.seed + args.seeds))
    print(f"{data.name}: {data.n_train} train / {data.n_test} test images; "
          f"methods {','.join(args.methods)}; seeds {seeds[0]}..{seeds[-1]}; "
          f"{cfg.epochs} epochs; {threads} thread{'s' if threads != 1 else ''}; "
          f"backend {cfg.backend}"
          + (f"; SAM/XSAM interval {cfg.interval}" if cfg.interval > 1 else ""), flush=True)

    from .train.runner import run_job

    try:
        summary = run_job(data, cfg, args.methods, seeds, args.out, progress=not args.no_progress)
    except ValueError as exc:  # bad hyper-parameters, reported by the optimizer
        return _error("train", str(exc))
    print(format_table(summary["rows"], interval=cfg.interval))
    files = summary["files"]
    print(f"wall time {summary['wall_s']:.1f} s for {len(args.methods)} methods x {len(seeds)} "
          f"seeds x {cfg.epochs} epochs")
    print(f"wrote {files['log']}, {files['csv']}, {files['summary']}, {files['plot']}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return _error("plot", f"matplotlib is missing: {TRAIN_EXTRA}")
    from .searchlog import is_search_log

    if os.path.isfile(args.log) and is_search_log(args.log):
        from .plotting import plot_search_log

        out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.log)), "search.png")
        try:
            path = plot_search_log(args.log, out)
        except (OSError, ValueError) as exc:
            return _error("plot", str(exc))
        print(f"wrote {path}")
        return 0
    from .train.plot import plot_log
    from .train.runner import PLOT_NAME

    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.log)), PLOT_NAME)
    try:
        path = plot_log(args.log, out)
    except (OSError, ValueError) as exc:
        return _error("plot", str(exc))
    print(f"wrote {path}")
    return 0


def _diagnose(args: argparse.Namespace) -> int:
    try:
        import matplotlib  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as exc:
        return _error("diagnose", f"{exc.name} is missing: {TRAIN_EXTRA}")
    from .diagnostics import run

    try:
        return run(args)
    except ValueError as exc:
        return _error("diagnose", str(exc))


def _bench(argv: list[str]) -> int:
    """Hand ``argv`` to ``benchmarks.bench_step.main`` where the harness is importable.

    The harness is not part of the installed package: it is importable only from a
    source checkout (``python -m xsam_fast bench`` in its root, or ``PYTHONPATH``
    naming it); anywhere else this says how to run it and returns 2.
    """
    try:
        from benchmarks import bench_step
    except ModuleNotFoundError as exc:
        if exc.name not in ("benchmarks", "benchmarks.bench_step"):
            raise
        command = shlex.join(["python", "-m", "benchmarks.bench_step", *argv])
        return _error("bench", (
            "the benchmark harness (benchmarks/bench_step.py) ships with the source tree, not "
            "with the installed package: in the root of a source checkout, with xsam-fast "
            f"installed, run `{command}`"))
    return int(bench_step.main(argv) or 0)
