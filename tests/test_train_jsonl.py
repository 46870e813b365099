"""The JSON Lines writer shared by the search log and the training log: append by default,
start afresh on request, read back with the file and line of a bad line."""

from __future__ import annotations

import pytest
import torch

from xsam_fast import XSAM
from xsam_fast.jsonl import JsonLinesWriter, read_jsonl
from xsam_fast.searchlog import SearchLogger, read_search_log
from xsam_fast.train.log import LogWriter, read_log


def test_writer_appends_unless_asked_to_start_afresh(tmp_path):
    path = tmp_path / "sub" / "log.jsonl"
    with JsonLinesWriter(path) as w:
        w.write({"i": 1})
    with JsonLinesWriter(path) as w:
        w.write({"i": 2})
    assert [o["i"] for o in read_jsonl(path)] == [1, 2]
    with JsonLinesWriter(path, append=False) as w:
        w.write({"i": 3})
    assert [o["i"] for o in read_jsonl(path)] == [3]


def test_each_line_is_on_disk_when_written(tmp_path):
    path = tmp_path / "log.jsonl"
    w = JsonLinesWriter(path)
    w.write({"i": 1})
    assert path.read_text() == '{"i": 1}\n'  # readable before close: an interrupted run keeps it
    w.close()


def test_a_bad_line_is_named(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"i": 1}\n\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"log.jsonl:3: not a JSON object"):
        list(read_jsonl(path))
    path.write_text('{"i": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"log.jsonl:2: not a JSON line"):
        list(read_jsonl(path))


def _searching_step(logger: SearchLogger) -> None:
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = XSAM([p], torch.optim.SGD, lr=0.1, rho=0.1, alpha_max=1.0, alpha_delta=0.5)
    opt.register_search_hook(logger)

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    opt.step(closure, search_loss=lambda: (p**2).sum(), update_alpha=True)


def test_search_logger_appends_on_resume_and_starts_afresh_on_request(tmp_path):
    path = tmp_path / "search.jsonl"
    for run in ("first", "resumed"):
        with SearchLogger(path, run=run) as logger:
            _searching_step(logger)
    assert [r["run"] for r in read_search_log(path)] == ["first", "resumed"]
    with SearchLogger(path, append=False, run="fresh") as logger:
        _searching_step(logger)
    assert [r["run"] for r in read_search_log(path)] == ["fresh"]


def test_training_log_round_trip(tmp_path):
    path = tmp_path / "log.jsonl"
    with LogWriter(path, {"dataset": "digits"}) as log:
        log.epoch({"epoch": 1, "method": "sgd", "train_loss": float("nan")})
    config, records = read_log(path)
    assert config == {"dataset": "digits"}
    assert records[0]["epoch"] == 1 and records[0]["train_loss"] != records[0]["train_loss"]
