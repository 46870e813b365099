"""The training job: every method under every seed, logged, summarised and plotted.

Runs are ordered seed by seed, and within a seed method by method, so that a
change in machine load during the job falls on all methods alike. Outputs in
``out_dir``: ``log.jsonl`` (config + one line per epoch, see :mod:`.log`),
``metrics.csv`` (its scalar columns), ``summary.json`` (the table's rows) and
``training.png`` (see :mod:`.plot`).
"""
from __future__ import annotations

import json
import os
import platform
import time
from typing import Any, Sequence

import torch

from .data import Dataset
from .log import LogWriter, read_log, write_csv
from .loop import TrainConfig, train_run, warm_up
from .report import summarize

LOG_NAME, CSV_NAME, SUMMARY_NAME, PLOT_NAME = "log.jsonl", "metrics.csv", "summary.json", "training.png"


def run_job(data: Dataset, cfg: TrainConfig, methods: Sequence[str], seeds: Sequence[int],
            out_dir: str, *, progress: bool = True) -> dict[str, Any]:
    """Train ``methods`` x ``seeds``; write the outputs; return the summary.

    The summary holds ``rows`` (:func:`~xsam_fast.train.report.summarize`),
    ``wall_s`` (the whole job) and ``files`` (what was written).
    """
    from tqdm.auto import tqdm

    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, name) for k, name in
             (("log", LOG_NAME), ("csv", CSV_NAME), ("summary", SUMMARY_NAME), ("plot", PLOT_NAME))}
    config = dict(dataset=data.name, n_train=data.n_train, n_test=data.n_test,
                  methods=list(methods), seeds=list(seeds), threads=torch.get_num_threads(),
                  torch=torch.__version__, machine=platform.machine(),
                  processor=platform.processor() or platform.machine(), **cfg.to_dict())
    start = time.perf_counter()
    warm_up(data, cfg, list(methods))
    with LogWriter(paths["log"], config) as log, \
            tqdm(total=len(seeds) * len(methods) * cfg.epochs, unit="epoch", disable=not progress,
                 dynamic_ncols=True) as bar, \
            tqdm(total=len(data.train), unit="batch", leave=False, disable=not progress,
                 dynamic_ncols=True) as batch_bar:
        for seed in seeds:
            for method in methods:
                bar.set_description(f"{method} seed {seed}")
                batch_bar.reset()
                for record in train_run(method, seed, data, cfg, on_batch=batch_bar.update):
                    log.epoch(record)
                    batch_bar.reset()
                    bar.update()
                    postfix = dict(loss=f"{record['train_loss']:.3f}",
                                   test=f"{100 * record['test_acc']:.1f}%")
                    if record["alpha"] is not None:
                        postfix["alpha"] = f"{record['alpha']:.1f}"
                    bar.set_postfix(postfix)
    wall = time.perf_counter() - start

    _, records = read_log(paths["log"])  # what the table and the plot show is what was logged
    write_csv(records, paths["csv"])
    rows = summarize(records, methods)
    summary = dict(rows=rows, wall_s=wall, config=config)
    with open(paths["summary"], "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    from .plot import plot_log
    plot_log(paths["log"], paths["plot"])
    summary["files"] = paths
    return summary
