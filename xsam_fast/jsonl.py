"""JSON Lines files written while a job runs: one object per line, flushed at once.

The search log (:mod:`xsam_fast.searchlog`) and the training log
(:mod:`xsam_fast.train.log`) both write through :class:`JsonLinesWriter` and
read back with :func:`read_jsonl`; an interrupted run leaves a readable file.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator


class JsonLinesWriter:
    """Write dicts as JSON lines to ``path`` (its folder is created).

    ``append=True`` (the default) adds to an existing file, so a resumed run
    keeps what was written before; ``append=False`` starts a fresh file,
    replacing an old one.
    """

    def __init__(self, path: str | os.PathLike, *, append: bool = True) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = os.fspath(path)
        self._file = open(self.path, "a" if append else "w", encoding="utf-8")

    def write(self, obj: dict[str, Any]) -> None:
        """One line, flushed to the OS before returning."""
        self._file.write(json.dumps(obj) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "JsonLinesWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """The objects of a JSON Lines file in file order (blank lines skipped).

    Raises ``ValueError`` naming the file and line of a line that is not a JSON object.
    """
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not a JSON line ({exc})") from exc
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{n}: not a JSON object")
            yield obj
