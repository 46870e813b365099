"""The training job: every method under every seed, logged, summarised and plotted.

Runs are ordered seed by seed, and within a seed method by method, so that a
change in machine load during the job falls on all methods alike. Outputs in
``out_dir``: ``log.jsonl`` (config + one line per epoch, see :mod:`.log`),
``metrics.csv`` (its scalar columns), ``summary.json`` (the tables' numbers)
and ``training.png`` (see :mod:`.plot`). A folder that already holds any of
them is refused unless ``overwrite=True``: earlier results are never replaced
by accident.
"""

from __future__ import annotations

import json
import os
import platform
import time
from typing import Any, Sequence

import torch

from .data import Dataset
from .errors import SetupError
from .log import LogWriter, read_log, write_csv
from .loop import TrainConfig, train_run, warm_up
from .report import alpha_per_epoch, paired_differences, summarize

LOG_NAME, CSV_NAME, SUMMARY_NAME, PLOT_NAME = (
    "log.jsonl",
    "metrics.csv",
    "summary.json",
    "training.png",
)
OUTPUTS = (("log", LOG_NAME), ("csv", CSV_NAME), ("summary", SUMMARY_NAME), ("plot", PLOT_NAME))


def output_paths(
    out_dir: str, *, overwrite: bool, outputs: Sequence[tuple[str, str]] = OUTPUTS
) -> dict[str, str]:
    """The paths of ``outputs`` (key, file name) in ``out_dir``, by key; raises
    :class:`SetupError` if ``out_dir`` or a folder above it is a file, or if an output
    exists and ``overwrite`` is False."""
    folder = os.path.abspath(out_dir)
    while not os.path.exists(folder):  # the nearest part of the path that exists
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        where = "" if folder == os.path.abspath(out_dir) else f": {folder}"
        raise SetupError(f"--out {out_dir}{where} is a file, not a folder")
    paths = {k: os.path.join(out_dir, name) for k, name in outputs}
    existing = [p for p in paths.values() if os.path.exists(p)]
    if existing and not overwrite:
        raise SetupError(
            f"{out_dir} already holds the results of an earlier run "
            f"({', '.join(os.path.basename(p) for p in existing)}); pass --out "
            f"with a new folder, or --overwrite to replace them"
        )
    return paths


def run_job(
    data: Dataset,
    cfg: TrainConfig,
    methods: Sequence[str],
    seeds: Sequence[int],
    out_dir: str,
    *,
    overwrite: bool = False,
    progress: bool = True,
    epoch_lines: bool = False,
    extra_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``methods`` x ``seeds``; write the outputs; return the summary.

    The summary holds ``rows`` (:func:`~xsam_fast.train.report.summarize`),
    ``differences`` (paired, :func:`~xsam_fast.train.report.paired_differences`),
    ``alpha_per_epoch``, ``wall_s`` (the whole job), ``config`` and ``files``.
    ``epoch_lines``: print one line per epoch (long epochs); ``extra_config``
    goes into the log's config line (data settings, preset).
    """
    from tqdm.auto import tqdm

    paths = output_paths(out_dir, overwrite=overwrite)
    os.makedirs(out_dir, exist_ok=True)
    config = dict(
        dataset=data.name,
        n_train=data.n_train,
        n_test=data.n_test,
        methods=list(methods),
        seeds=list(seeds),
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        machine=platform.machine(),
        processor=platform.processor() or platform.machine(),
        **data.info,
        **(extra_config or {}),
        **cfg.to_dict(),
    )
    start = time.perf_counter()
    warm_up(data, cfg, list(methods))
    with (
        LogWriter(paths["log"], config) as log,
        tqdm(
            total=len(seeds) * len(methods) * cfg.epochs,
            unit="epoch",
            disable=not progress,
            dynamic_ncols=True,
        ) as bar,
        tqdm(
            total=data.n_train,
            unit="img",
            unit_scale=True,
            leave=False,
            disable=not progress,
            dynamic_ncols=True,
        ) as epoch_bar,
    ):
        for seed in seeds:
            for method in methods:
                bar.set_description(f"{method} seed {seed}")
                epoch_bar.reset()
                for record in train_run(method, seed, data, cfg, on_batch=epoch_bar.update):
                    log.epoch(record)
                    epoch_bar.reset()
                    bar.update()
                    bar.set_postfix(_postfix(record))
                    if epoch_lines:
                        tqdm.write(_epoch_line(record, cfg.epochs))
    wall = time.perf_counter() - start

    _, records = read_log(paths["log"])  # what the tables and the plot show is what was logged
    write_csv(records, paths["csv"])
    diffs = paired_differences(records)
    summary = dict(
        rows=summarize(records, methods),
        differences=[d.to_dict() for d in diffs],
        alpha_per_epoch=alpha_per_epoch(records),
        wall_s=wall,
        config=config,
    )
    with open(paths["summary"], "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    from .plot import plot_log

    plot_log(paths["log"], paths["plot"])
    summary["files"] = paths
    summary["paired"] = diffs
    return summary


def _postfix(record: dict[str, Any]) -> dict[str, str]:
    postfix = dict(
        loss=f"{record['train_loss']:.3f}",
        test=f"{100 * record['test_acc']:.1f}%",
        img_s=f"{record['images_per_s']:.0f}",
    )
    if record["alpha"] is not None:
        postfix["alpha"] = f"{record['alpha']:g}"
    return postfix


def _epoch_line(r: dict[str, Any], epochs: int) -> str:
    alpha = "" if r["alpha"] is None else f"  alpha {r['alpha']:g}"
    skipped = f"  skipped {r['skipped_steps']}" if r["skipped_steps"] else ""
    return (
        f"{r['method']} seed {r['seed']} epoch {r['epoch']}/{epochs}: "
        f"train loss {r['train_loss']:.4f} acc {100 * r['train_acc']:.2f}%  "
        f"test loss {r['test_loss']:.4f} acc {100 * r['test_acc']:.2f}%  "
        f"{r['epoch_time_s']:.1f} s  {r['images_per_s']:.0f} img/s  lr {r['lr']:.4g}"
        f"{alpha}{skipped}"
    )
