"""The per-epoch log of a training job: JSON Lines, written as the job runs.

The first line is ``{"kind": "config", ...}`` (the job's settings); every other
line is ``{"kind": "epoch", ...}`` with the fields of
:func:`xsam_fast.train.loop.train_run` (``search_curve`` included, so plots can
be redrawn from the log alone; ``psi`` in radians). Each line is flushed when
written: an interrupted job leaves a readable log. :func:`write_csv` exports the scalar
fields as a flat table for spreadsheets.
"""

from __future__ import annotations

import csv
import os
from typing import Any, Iterable

from ..jsonl import JsonLinesWriter, read_jsonl

#: scalar fields of an epoch record, in CSV column order
CSV_FIELDS = (
    "epoch",
    "method",
    "seed",
    "lr",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "alpha",
    "psi",  # radians
    "epoch_time_s",
    "images_per_s",
    "skipped_steps",
    "steps",
)


class LogWriter:
    """A fresh JSON Lines log at ``path``, its config line first.

    The caller decides whether an existing log may be replaced (the command
    refuses unless ``--overwrite``); this class replaces it.
    """

    def __init__(self, path: str | os.PathLike, config: dict[str, Any]) -> None:
        self._writer = JsonLinesWriter(path, append=False)
        self.path = self._writer.path
        self._writer.write({"kind": "config", **config})

    def epoch(self, record: dict[str, Any]) -> None:
        self._writer.write({"kind": "epoch", **record})

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> "LogWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_log(path: str | os.PathLike) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(config, epoch records)`` from a log written by :class:`LogWriter`."""
    config: dict[str, Any] = {}
    records: list[dict[str, Any]] = []
    for obj in read_jsonl(path):
        kind = obj.pop("kind", None)
        if kind == "config":
            config = obj
        elif kind == "epoch":
            records.append(obj)
    if not records:
        raise ValueError(f"{path}: no epoch records (is it a log written by `xsam-fast train`?)")
    return config, records


def write_csv(records: Iterable[dict[str, Any]], path: str | os.PathLike) -> None:
    """The scalar fields of ``records`` as CSV (empty cells for None)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in records:
            writer.writerow({k: ("" if r.get(k) is None else r[k]) for k in CSV_FIELDS})
