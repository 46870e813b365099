"""The benchmark harness: its baselines compute XSAM's update, and a tiny run writes its files."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ is not installed; plain `pytest` needs the root
    sys.path.insert(0, str(ROOT))

from benchmarks import bench_step  # noqa: E402
from benchmarks.baselines import AuthorsStyleXSAM, CompiledXSAM, ForeachXSAM  # noqa: E402
from xsam_fast import XSAM  # noqa: E402

HYPER = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
RHO, ALPHA, STEPS = 0.05, 0.7, 3


def _model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def _train(make, *, backup_param: bool) -> list[torch.Tensor]:
    """Three XSAM steps in the authors' call sequence on a float64 model; the final params."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 5, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 3, (16,), generator=gen)
    model = _model()
    opt = make(model.parameters())
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(STEPS):
        if backup_param:
            opt.backup_param()
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.first_step(0)
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.second_step(False)
    return [p.detach().clone() for p in model.parameters()]


def _assert_close(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    start = [p.detach() for p in _model().parameters()]
    for g, w, s in zip(got, want, start):
        assert (w - s).abs().max() > 1e-3, "the reference did not move: the test tests nothing"
        torch.testing.assert_close(g, w, atol=1e-10, rtol=0)


def _reference(fuse: bool):
    return lambda ps: XSAM(ps, torch.optim.SGD, rho=RHO, alpha=ALPHA, backend="reference",
                           fuse_base_update=fuse, **HYPER)


BASELINE_MAKERS = {
    "authors-style": lambda ps: AuthorsStyleXSAM(ps, torch.optim.SGD, rho=RHO, alpha=ALPHA, **HYPER),
    "foreach": lambda ps: ForeachXSAM(ps, torch.optim.SGD, rho=RHO, alpha=ALPHA, **HYPER),
    "compiled": lambda ps: CompiledXSAM(ps, torch.optim.SGD, rho=RHO, alpha=ALPHA, **HYPER),
}


@pytest.mark.parametrize("baseline", list(BASELINE_MAKERS))
@pytest.mark.parametrize("fuse", [
    pytest.param(False, id="reference-unfused"),
    pytest.param(True, id="reference-fused"),
])
def test_baseline_matches_reference(baseline: str, fuse: bool) -> None:
    want = _train(_reference(fuse), backup_param=False)
    got = _train(BASELINE_MAKERS[baseline], backup_param=True)
    _assert_close(got, want)


def test_foreach_backup_inside_first_step() -> None:
    """ForeachXSAM, like XSAM, backs up theta_0 in first_step when backup_param was skipped."""
    want = _train(_reference(False), backup_param=False)
    _assert_close(_train(BASELINE_MAKERS["foreach"], backup_param=False), want)


def test_resnet18_shapes() -> None:
    assert len(bench_step.RESNET18_SHAPES) == 62
    assert bench_step.numel(bench_step.RESNET18_SHAPES) == 11_173_962


def test_bench_step_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = bench_step.main(["--sizes", "tiny", "--dtypes", "fp32,bf16", "--repeat", "1",
                          "--warmup", "0", "--copy-mib", "8", "--out", str(tmp_path)])
    assert rc == 0
    csvs = list(tmp_path.glob("step_cpu_*.csv"))
    pngs = list(tmp_path.glob("step_cpu_*.png"))
    assert len(csvs) == 1 and len(pngs) == 1
    assert pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(csvs[0]) as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == bench_step.CSV_COLUMNS
        rows = list(reader)
    impls = {r["impl"] for r in rows}
    assert {"authors-style", "foreach", "xsam:reference"} <= impls
    assert {r["dtype"] for r in rows} == {"fp32", "bf16"}
    for r in rows:
        assert r["size"] == "tiny" and int(r["n_params"]) == bench_step.numel(bench_step.TINY_SHAPES)
        assert float(r["median_ms"]) > 0 and float(r["gbps"]) > 0 and float(r["x_floor"]) > 0
        assert float(r["rmw_gbps"]) > 0 and float(r["x_floor_rmw"]) > 0
        assert r["torch"] == torch.__version__ and r["date"] and r["machine"]
        elem = 4 if r["dtype"] == "fp32" else 2
        assert int(r["floor_bytes"]) == 14 * elem * int(r["n_params"])
        if r["impl"] == "authors-style":
            assert float(r["speedup_vs_authors"]) == 1.0
    out = capsys.readouterr().out
    assert "x floor" in out and "vs authors" in out
