"""benchmarks/epoch_overhead.py: a tiny run writes its table, and the replay of the strategies
on recorded grid curves scores a miss as a miss."""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ is not installed; plain `pytest` needs the root
    sys.path.insert(0, str(ROOT))

from benchmarks import epoch_overhead  # noqa: E402
from xsam_fast.coefficients import alpha_grid  # noqa: E402


def test_tiny_run_writes_paired_ratios(tmp_path):
    before = torch.get_num_threads()
    out = tmp_path / "eo"
    try:
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            assert (
                epoch_overhead.main(
                    [
                        "--batches",
                        "3",
                        "--rounds",
                        "2",
                        "--curves",
                        "3",
                        "--bs",
                        "8",
                        "--width",
                        "4",
                        "--out",
                        str(out),
                    ]
                )
                == 0
            )
    finally:
        torch.set_num_threads(before)
    results = json.loads((out / "results.json").read_text())
    methods = list(epoch_overhead.METHODS)
    assert sorted((e["method"], e["round"]) for e in results["epochs"]) == sorted(
        (m, r) for m in methods for r in (0, 1)
    )
    order = [[e["method"] for e in results["epochs"] if e["round"] == r] for r in (0, 1)]
    assert order[1] == order[0][1:] + order[0][:1]  # rotated between rounds
    by = {(e["method"], e["round"]): e for e in results["epochs"]}
    for m in methods:
        ratios = [by[m, r]["wall_s"] / by["SAM", r]["wall_s"] for r in (0, 1)]
        assert results["wall"][m]["ratio_median"] == pytest.approx(sum(ratios) / 2)
    assert results["wall"]["SAM"]["extra_pct"] == 0.0
    assert results["agreement"]["grid"]["n"] == 3 + 2  # the extra curves + one per timed epoch
    assert "| XSAM fibonacci |" in (out / "table.md").read_text()
    assert "load average" in printed.getvalue()


def test_replay_scores_the_strategies_on_the_recorded_curves():
    grid = alpha_grid(2.0, 0.1)
    unimodal = [(a, -((a - 1.3) ** 2)) for a in grid]
    # two bumps, the higher one at 0.2 and a wide lower one at 1.5: Fibonacci's first probes
    # land on the wide bump and it never returns
    bimodal = [
        (a, 1.0 * math.exp(-(((a - 0.2) / 0.1) ** 2)) + 0.8 * math.exp(-(((a - 1.5) / 0.5) ** 2)))
        for a in grid
    ]
    res = epoch_overhead.agreement([unimodal, bimodal])
    assert res["grid"]["exact"] == 1.0 and res["grid"]["passes_mean"] == len(grid)
    assert res["fibonacci"]["exact"] == 0.5 and res["fibonacci"]["passes_mean"] < len(grid)
