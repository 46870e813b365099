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
#: digits' default label noise (CIFAR: none); chosen by measurement, see README "The main job"
DIGITS_LABEL_NOISE = 0.4


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text}")
    return value


def _methods(text: str) -> list[str]:
    from .train.loop import METHODS

    methods = [m.strip().lower() for m in text.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if not methods or bad or len(set(methods)) != len(methods):
        raise argparse.ArgumentTypeError(
            f"expected distinct names from {','.join(METHODS)} separated by commas, got {text!r}"
        )
    return methods


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _preset_of(argv: Sequence[str]) -> str | None:
    """The value of ``train --preset`` in ``argv`` (None if absent), before full parsing."""
    if not argv or argv[0] != "train":
        return None
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset")
    return pre.parse_known_args(list(argv[1:]))[0].preset


def build_parser(preset: str | None = None) -> argparse.ArgumentParser:
    """The command's parser; ``preset`` (a key of ``PRESETS``) sets the train defaults."""
    from .backends import backend_names
    from .search import STRATEGIES
    from .train.data import DATASETS
    from .train.loop import TrainConfig
    from .train.model import MODELS
    from .train.presets import PRESETS
    from .train.runtime import AMP_DTYPES, DEVICES

    d = TrainConfig()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "XSAM (eXplicit Sharpness-Aware Minimization) for PyTorch: training demo, plots "
            "and benchmarks."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="{train,plot,diagnose,bench}")

    t = sub.add_parser(
        "train",
        help="train with SGD, SAM and XSAM; print a table",
        description=(
            "Train a model (BatchNorm) with SGD, SAM (XSAM with alpha=1) and "
            "XSAM (alpha searched on the first batch of every epoch) under the same "
            "seeds, epochs and cosine learning-rate schedule; print test accuracy "
            "(mean ± std over seeds), the paired differences between methods with "
            "95% intervals, XSAM's alpha* per epoch and time per epoch; write a "
            "log, a CSV, a summary and a plot to --out. Default: a small CNN on "
            "scikit-learn's digits with 40% of the training labels made wrong."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    t.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="the XSAM paper's recipe (ResNet-18, 200 epochs, ...; see the README); "
        "other flags override its values",
    )
    g = t.add_argument_group("data")
    g.add_argument(
        "--dataset",
        choices=DATASETS,
        default="digits",
        help="digits: scikit-learn's bundled 8x8 digits (no download); cifar10/100: "
        "the python-version pickles under --data_dir",
    )
    g.add_argument(
        "--data_dir",
        default="data",
        help="folder holding cifar-10-batches-py/ or cifar-100-python/",
    )
    g.add_argument(
        "--download",
        action="store_true",
        help="fetch the CIFAR archive into --data_dir if missing (needs internet)",
    )
    g.add_argument(
        "--label_noise",
        type=_fraction,
        default=None,
        help=f"fraction of training labels replaced by a wrong class (symmetric "
        f"noise; default {DIGITS_LABEL_NOISE} for digits, 0 for CIFAR; 0: clean)",
    )
    g.add_argument(
        "--test_size", type=float, default=0.2, help="fraction of digits held out for testing"
    )
    g.add_argument(
        "--split_seed",
        type=int,
        default=0,
        help="seed of the digits train/test split and of the label noise (the same for every run)",
    )
    g.add_argument(
        "--cutout",
        type=int,
        default=0,
        help="CIFAR: side of the Cutout square (probability 0.5); 0: none",
    )

    g = t.add_argument_group("optimisation (names as in the authors' train.py)")
    g.add_argument("--epochs", type=_positive_int, default=d.epochs)
    g.add_argument("--bs", type=_positive_int, default=d.bs, help="batch size")
    g.add_argument("--lr", type=float, default=d.lr, help="initial learning rate (cosine schedule)")
    g.add_argument("--momentum", "--mo", dest="momentum", type=float, default=d.momentum)
    g.add_argument("--wd", type=float, default=d.wd, help="weight decay")
    g.add_argument("--rho", type=float, default=d.rho, help="total length of the gradient ascent")
    g.add_argument(
        "--rho_max",
        type=float,
        default=d.rho_max,
        help="distance at which the alpha search evaluates the loss",
    )
    g.add_argument("--steps", type=_positive_int, default=d.steps, help="ascent steps")
    g.add_argument("--eps", type=float, default=d.eps)
    g.add_argument(
        "--alpha",
        type=float,
        default=d.alpha,
        help="XSAM's alpha with --no-is_dynamic (SAM always uses 1)",
    )
    g.add_argument(
        "--is_dynamic",
        action=argparse.BooleanOptionalAction,
        default=d.is_dynamic,
        help="XSAM searches alpha on the first batch of every epoch",
    )
    g.add_argument("--alpha_max", type=float, default=d.alpha_max, help="end of the alpha grid")
    g.add_argument("--alpha_delta", type=float, default=d.alpha_delta, help="alpha grid step")
    g.add_argument(
        "--search",
        choices=list(STRATEGIES),
        default=d.search,
        help="XSAM's search strategy (grid: the authors' exhaustive search)",
    )
    g.add_argument(
        "--model",
        choices=list(MODELS),
        default=d.model,
        help="smallcnn: 3 conv layers; resnet18: the authors' CIFAR ResNet-18",
    )
    g.add_argument(
        "--width",
        type=_positive_int,
        default=d.width,
        help="channels of the first layer (default: "
        + ", ".join(f"{k} {v}" for k, v in MODELS.items())
        + ")",
    )
    g.add_argument(
        "--interval",
        type=_positive_int,
        default=d.interval,
        help="SAM and XSAM take their full step on every interval-th batch and a "
        "plain SGD step (one forward/backward) on the others",
    )

    g = t.add_argument_group("job")
    g.add_argument(
        "--methods",
        type=_methods,
        default=["sgd", "sam", "xsam"],
        help="comma-separated subset of sgd,sam,xsam",
    )
    g.add_argument("--seed", type=int, default=0, help="first seed")
    g.add_argument(
        "--seeds",
        type=_positive_int,
        default=5,
        help="number of seeds (seed, seed+1, ...); the table gives mean ± std",
    )
    g.add_argument(
        "--device",
        choices=DEVICES,
        default="cpu",
        help="auto: CUDA when a GPU is visible, else the CPU",
    )
    g.add_argument(
        "--amp",
        choices=list(AMP_DTYPES),
        default=d.amp,
        help="mixed precision: forward passes under autocast (fp16 with loss scaling)",
    )
    g.add_argument(
        "--channels_last",
        action="store_true",
        help="model and batches in channels-last memory format (faster convs on GPUs)",
    )
    g.add_argument(
        "--backend",
        choices=backend_names(),
        default=d.backend,
        help="XSAM backend (see xsam_fast.available_backends())",
    )
    g.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="torch CPU threads (default: 1 for digits, else every core this process may use)",
    )
    g.add_argument("--out", default=os.path.join("results", "train"), help="output folder")
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the results of an earlier run in --out (refused otherwise)",
    )
    g.add_argument("--no_progress", action="store_true", help="no progress bars")
    if preset in PRESETS:
        t.set_defaults(preset=preset, **PRESETS[preset])

    p = sub.add_parser(
        "plot",
        help="redraw the figure of a training log or a search log",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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

    from .train.data import load_dataset
    from .train.errors import DatasetUnavailable, SetupError
    from .train.loop import TrainConfig
    from .train.report import format_alphas, format_differences, format_table, problems
    from .train.runner import output_paths
    from .train.runtime import check_backend, resolve_device

    try:
        import matplotlib  # noqa: F401
        import tqdm  # noqa: F401
    except ImportError as exc:
        return _error("train", f"{exc.name} is missing: {TRAIN_EXTRA}")
    # digits' tiny batches gain nothing from more threads, and on a busy machine
    # several spinning threads made its epochs 10x slower (measured, see the README)
    threads = args.threads or (1 if args.dataset == "digits" else _cores())
    torch.set_num_threads(threads)
    label_noise = args.label_noise
    if label_noise is None:
        label_noise = DIGITS_LABEL_NOISE if args.dataset == "digits" else 0.0
    try:
        device = resolve_device(args.device)
        check_backend(args.backend, device)
        output_paths(args.out, overwrite=args.overwrite)  # refuse before any work
        cfg = TrainConfig(
            epochs=args.epochs,
            bs=args.bs,
            lr=args.lr,
            momentum=args.momentum,
            wd=args.wd,
            rho=args.rho,
            rho_max=args.rho_max,
            steps=args.steps,
            alpha=args.alpha,
            is_dynamic=args.is_dynamic,
            alpha_max=args.alpha_max,
            alpha_delta=args.alpha_delta,
            eps=args.eps,
            search=args.search,
            backend=args.backend,
            model=args.model,
            width=args.width,
            interval=args.interval,
            device=str(device),
            amp=args.amp,
            channels_last=args.channels_last,
        )
        data = load_dataset(
            args.dataset,
            batch_size=args.bs,
            split_seed=args.split_seed,
            data_dir=args.data_dir,
            download=args.download,
            test_size=args.test_size,
            label_noise=label_noise,
            device=device,
            cutout=args.cutout,
            channels_last=args.channels_last,
        )
    except (DatasetUnavailable, SetupError, ValueError) as exc:
        return _error("train", str(exc))
    seeds = list(range(args.seed, args.seed + args.seeds))
    print(
        f"{data.name}: {data.n_train} train / {data.n_test} test images"
        + (f", {100 * label_noise:g}% of the training labels wrong" if label_noise else "")
        + f"; {cfg.model}; methods {','.join(args.methods)}; seeds {seeds[0]}..{seeds[-1]}; "
        f"{cfg.epochs} epochs; device {device}"
        + (f" ({threads} thread{'s' if threads != 1 else ''})" if device.type == "cpu" else "")
        + f"; backend {cfg.backend}"
        + (f"; amp {cfg.amp}" if cfg.amp != "none" else "")
        + ("; channels_last" if cfg.channels_last else "")
        + (f"; SAM/XSAM interval {cfg.interval}" if cfg.interval > 1 else "")
        + (f"; preset {args.preset}" if args.preset else ""),
        flush=True,
    )

    from .train.runner import run_job

    try:
        summary = run_job(
            data,
            cfg,
            args.methods,
            seeds,
            args.out,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            epoch_lines=data.name != "digits",
            extra_config=dict(preset=args.preset, cutout=args.cutout),
        )
    except (SetupError, ValueError) as exc:  # bad hyper-parameters, reported by the optimizer
        return _error("train", str(exc))
    print(format_table(summary["rows"], interval=cfg.interval))
    for text in (format_differences(summary["paired"]), format_alphas(summary["alpha_per_epoch"])):
        if text:
            print(text)
    files = summary["files"]
    print(
        f"wall time {summary['wall_s']:.1f} s for {len(args.methods)} methods x {len(seeds)} "
        f"seeds x {cfg.epochs} epochs"
    )
    print(f"wrote {files['log']}, {files['csv']}, {files['summary']}, {files['plot']}")
    trouble = problems(summary["rows"])
    for line in trouble:
        print(f"{PROG} train: warning: {line}", file=sys.stderr)
    if any(row["diverged_seeds"] for row in summary["rows"]):
        print(
            f"{PROG} train: error: training diverged (see the warnings above); check --lr and "
            f"the other hyper-parameters",
            file=sys.stderr,
        )
        return 1
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
        return _error(
            "bench",
            (
                "the benchmark harness (benchmarks/bench_step.py) ships with the source tree, not "
                "with the installed package: in the root of a source checkout, with xsam-fast "
                f"installed, run `{command}`"
            ),
        )
    return int(bench_step.main(argv) or 0)
