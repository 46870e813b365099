"""A JSON Lines log of the alpha searches, written while training.

Attach a :class:`SearchLogger` to an optimizer; every search appends one line
``{"kind": "search", "step": ..., "alpha": ..., "curve": [[alpha, loss], ...],
"psi": ..., "grad_norm": ..., "d_norm": ..., "strategy": ..., "evaluations": ...,
"forwards": ..., "time_s": ..., **context}``, flushed at once (an interrupted run
leaves a readable log). An existing log is appended to, so a resumed run keeps
its earlier searches; ``SearchLogger(path, append=False)`` starts afresh::

    logger = SearchLogger("runs/search.jsonl", run="xsam-seed0")
    opt.register_search_hook(logger)
    for epoch in range(epochs):
        logger.context["epoch"] = epoch
        ...

:func:`read_search_log` reads it back; :mod:`xsam_fast.plotting` draws it.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .jsonl import JsonLinesWriter, read_jsonl

#: fields of every search record (besides the logger's context)
FIELDS = (
    "step",
    "alpha",
    "curve",
    "psi",
    "grad_norm",
    "d_norm",
    "strategy",
    "evaluations",
    "forwards",
    "time_s",
)


class SearchLogger:
    """A search hook (``opt.register_search_hook(logger)``) that appends records to ``path``.

    An existing ``path`` is appended to (``append=False`` replaces it).
    ``context`` (a dict, also set from the keyword arguments) is merged into
    every record: put the epoch or the run's name there.
    """

    def __init__(self, path: str | os.PathLike, *, append: bool = True, **context: Any) -> None:
        self._writer = JsonLinesWriter(path, append=append)
        self.path = self._writer.path
        self.context: dict[str, Any] = dict(context)

    def __call__(self, optimizer: Any, record: dict[str, Any]) -> None:
        line = {"kind": "search", **self.context, **record}
        line["curve"] = [[float(a), float(loss)] for a, loss in record["curve"]]
        self._writer.write(line)

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> "SearchLogger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_search_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The search records of a JSON Lines file, in file order.

    Lines of other kinds are skipped, so a training log that also holds search
    records (``"kind": "search"``) can be read too. Raises ``ValueError`` on a
    line that is not JSON or when there is no search record.
    """
    records = [obj for obj in read_jsonl(path) if obj.get("kind") == "search"]
    if not records:
        raise ValueError(
            f"{path}: no search records (written by xsam_fast.searchlog.SearchLogger?)"
        )
    return records


def is_search_log(path: str | os.PathLike) -> bool:
    """Whether the first non-empty line of ``path`` is a search record."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    return json.loads(line).get("kind") == "search"
                except (json.JSONDecodeError, AttributeError):
                    return False
    return False
