"""``xsam-fast train``: its arguments and its run (the job itself: :mod:`.runner`)."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Any

from ..argtypes import fraction, nonneg_float, open_fraction, positive_float, positive_int
from ..cli import PROG, TRAIN_EXTRA, HelpFormatter, error

#: digits' default label noise (CIFAR: none); chosen by measurement, see README "The main job"
DIGITS_LABEL_NOISE = 0.4


def _methods(text: str) -> list[str]:
    from .loop import METHODS

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


def add_train_parser(sub: Any, preset: str | None) -> None:
    """The ``train`` subcommand; ``preset`` (a key of ``PRESETS``) sets its defaults."""
    from ..backends import backend_names
    from ..search import STRATEGIES
    from .data import DATASETS
    from .loop import METHODS, TrainConfig
    from .model import MODELS
    from .presets import PRESETS
    from .runtime import AMP_DTYPES, DEVICES

    d = TrainConfig()
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
        formatter_class=HelpFormatter,
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
        type=fraction,
        default=None,
        help=f"fraction of training labels replaced by a wrong class (symmetric "
        f"noise; default {DIGITS_LABEL_NOISE} for digits, 0 for CIFAR; 0: clean)",
    )
    g.add_argument(
        "--test_size",
        type=open_fraction,
        default=0.2,
        help="fraction of digits held out for testing",
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
    g.add_argument(
        "--epochs",
        type=positive_int,
        default=d.epochs,
        help="epochs of every run (the cosine schedule spans them)",
    )
    g.add_argument("--bs", type=positive_int, default=d.bs, help="batch size")
    g.add_argument(
        "--lr", type=nonneg_float, default=d.lr, help="initial learning rate (cosine schedule)"
    )
    g.add_argument(
        "--momentum",
        "--mo",
        dest="momentum",
        type=nonneg_float,
        default=d.momentum,
        help="momentum of SGD, the base optimizer of every method",
    )
    g.add_argument("--wd", type=nonneg_float, default=d.wd, help="weight decay")
    g.add_argument(
        "--rho", type=nonneg_float, default=d.rho, help="total length of the gradient ascent"
    )
    g.add_argument(
        "--rho_max",
        type=nonneg_float,
        default=d.rho_max,
        help="distance at which the alpha search evaluates the loss",
    )
    g.add_argument("--steps", type=positive_int, default=d.steps, help="ascent steps")
    g.add_argument(
        "--eps",
        type=nonneg_float,
        default=d.eps,
        help="added to every norm before dividing by it",
    )
    g.add_argument(
        "--alpha",
        type=nonneg_float,
        default=d.alpha,
        help="XSAM's alpha with --no-is_dynamic (SAM always uses 1)",
    )
    g.add_argument(
        "--is_dynamic",
        action=argparse.BooleanOptionalAction,
        default=d.is_dynamic,
        help="XSAM searches alpha on the first batch of every epoch",
    )
    g.add_argument(
        "--alpha_max", type=nonneg_float, default=d.alpha_max, help="end of the alpha grid"
    )
    g.add_argument(
        "--alpha_delta", type=positive_float, default=d.alpha_delta, help="alpha grid step"
    )
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
        type=positive_int,
        default=d.width,
        help="channels of the first layer (default: "
        + ", ".join(f"{k} {v}" for k, v in MODELS.items())
        + ")",
    )
    g.add_argument(
        "--interval",
        type=positive_int,
        default=d.interval,
        help="SAM and XSAM take their full step on every interval-th batch and a "
        "plain SGD step (one forward/backward) on the others",
    )

    g = t.add_argument_group("job")
    g.add_argument(
        "--methods",
        type=_methods,
        default=",".join(METHODS),
        help="comma-separated subset of sgd,sam,xsam",
    )
    g.add_argument("--seed", type=int, default=0, help="first seed")
    g.add_argument(
        "--seeds",
        type=positive_int,
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
        type=positive_int,
        default=None,
        help="torch CPU threads (default: 1 for digits, else every core this process may use)",
    )
    g.add_argument("--out", default=os.path.join("results", "train"), help="output folder")
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the results of an earlier run in --out (refused otherwise)",
    )
    g.add_argument(
        "--no_progress",
        action="store_true",
        help="no progress bars (without it, bars when stderr is a terminal, else one line "
        "per epoch)",
    )
    if preset in PRESETS:
        t.set_defaults(preset=preset, **PRESETS[preset])


def run(args: argparse.Namespace) -> int:
    """Run ``xsam-fast train`` with parsed ``args``; returns the exit status."""
    import torch

    from .data import load_dataset
    from .errors import DatasetUnavailable, SetupError
    from .loop import TrainConfig
    from .report import format_alphas, format_differences, format_table, problems
    from .runner import output_paths
    from .runtime import check_backend, resolve_device

    try:
        import matplotlib  # noqa: F401
        import tqdm  # noqa: F401
    except ImportError as exc:
        return error("train", f"{exc.name} is missing: {TRAIN_EXTRA}")
    # digits' tiny batches gain nothing from more threads, and on a busy machine
    # several spinning threads made its epochs 10x slower (measured, see the README)
    threads = args.threads or (1 if args.dataset == "digits" else _cores())
    torch.set_num_threads(threads)
    label_noise = args.label_noise
    if label_noise is None:
        label_noise = DIGITS_LABEL_NOISE if args.dataset == "digits" else 0.0
    try:
        device = resolve_device(args.device)
        if args.amp == "fp16" and device.type == "cpu":
            print(
                f"{PROG} train: warning: --amp fp16 on the CPU is tens of times slower than "
                "fp32 (no fast fp16 CPU kernels; 55x measured on the digits job): use --amp "
                "bf16 or none",
                file=sys.stderr,
            )
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
        return error("train", str(exc))
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

    from .runner import run_job

    # bars need a terminal; elsewhere (a file, a pipe) one line per epoch instead
    bars = not args.no_progress and sys.stderr.isatty()
    try:
        with warnings.catch_warnings():
            # the job reports skipped steps itself (table, epoch lines, warnings below)
            warnings.filterwarnings(
                "ignore", message=r"XSAM: \d+ step\(s\) skipped", category=RuntimeWarning
            )
            warnings.showwarning = _show_warning
            summary = run_job(
                data,
                cfg,
                args.methods,
                seeds,
                args.out,
                overwrite=args.overwrite,
                progress=bars,
                epoch_lines=data.name != "digits" or not (bars or args.no_progress),
                extra_config=dict(preset=args.preset, cutout=args.cutout),
            )
    except (SetupError, ValueError) as exc:  # bad hyper-parameters, reported by the optimizer
        return error("train", str(exc))
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


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning`` during the job: a warning as one of the command's own lines."""
    print(f"{PROG} train: warning: {message}", file=sys.stderr)
