"""The benchmark harness: its baselines compute XSAM's update, tiny runs write their files,
and the Triton launch counter counts, runs or skips launches."""

from __future__ import annotations

import csv
import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ is not installed; plain `pytest` needs the root
    sys.path.insert(0, str(ROOT))

from benchmarks import bench_step, host_overhead  # noqa: E402
from benchmarks.baselines import AuthorsStyleXSAM, CompiledXSAM, ForeachXSAM  # noqa: E402
from benchmarks.shapes import RESNET18_SHAPES, TINY_SHAPES, numel  # noqa: E402
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
    return lambda ps: XSAM(
        ps,
        torch.optim.SGD,
        rho=RHO,
        alpha=ALPHA,
        backend="reference",
        fuse_base_update=fuse,
        **HYPER,
    )


BASELINE_MAKERS = {
    "authors-style": lambda ps: AuthorsStyleXSAM(
        ps, torch.optim.SGD, rho=RHO, alpha=ALPHA, **HYPER
    ),
    "foreach": lambda ps: ForeachXSAM(ps, torch.optim.SGD, rho=RHO, alpha=ALPHA, **HYPER),
    "compiled": lambda ps: CompiledXSAM(ps, torch.optim.SGD, rho=RHO, alpha=ALPHA, **HYPER),
}


@pytest.mark.parametrize("baseline", list(BASELINE_MAKERS))
@pytest.mark.parametrize(
    "fuse",
    [
        pytest.param(False, id="reference-unfused"),
        pytest.param(True, id="reference-fused"),
    ],
)
def test_baseline_matches_reference(baseline: str, fuse: bool) -> None:
    want = _train(_reference(fuse), backup_param=False)
    got = _train(BASELINE_MAKERS[baseline], backup_param=True)
    _assert_close(got, want)


def test_foreach_backup_inside_first_step() -> None:
    """ForeachXSAM, like XSAM, backs up theta_0 in first_step when backup_param was skipped."""
    want = _train(_reference(False), backup_param=False)
    _assert_close(_train(BASELINE_MAKERS["foreach"], backup_param=False), want)


def test_resnet18_shapes() -> None:
    assert len(RESNET18_SHAPES) == 62
    assert numel(RESNET18_SHAPES) == 11_173_962


def test_bench_step_smoke(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tiny run writes CSV, Markdown and PNG under results/bench of the current directory."""
    monkeypatch.chdir(tmp_path)
    rc = bench_step.main(
        [
            "--sizes",
            "tiny",
            "--dtypes",
            "fp32,bf16",
            "--repeat",
            "1",
            "--warmup",
            "0",
            "--copy-mib",
            "8",
        ]
    )
    assert rc == 0
    out_dir = tmp_path / "results" / "bench"
    csvs = list(out_dir.glob("step_cpu_*.csv"))
    pngs = list(out_dir.glob("step_cpu_*.png"))
    assert len(csvs) == 1 and len(pngs) == 1
    assert "| xsam:reference | tiny | fp32 |" in csvs[0].with_suffix(".md").read_text()
    assert pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(csvs[0]) as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == bench_step.CSV_COLUMNS
        rows = list(reader)
    impls = {r["impl"] for r in rows}
    assert {"authors-style", "foreach", "xsam:reference"} <= impls
    assert {r["dtype"] for r in rows} == {"fp32", "bf16"}
    for r in rows:
        assert r["size"] == "tiny" and int(r["n_params"]) == numel(TINY_SHAPES)
        assert float(r["median_ms"]) > 0 and float(r["gbps"]) > 0 and float(r["x_floor"]) > 0
        assert float(r["rmw_gbps"]) > 0 and float(r["x_floor_rmw"]) > 0
        assert r["torch"] == torch.__version__ and r["date"] and r["machine"] and r["load"]
        elem = 4 if r["dtype"] == "fp32" else 2
        assert int(r["floor_bytes"]) == 14 * elem * int(r["n_params"])
        if r["impl"] == "authors-style":
            assert float(r["speedup_vs_authors"]) == 1.0
    out = capsys.readouterr().out
    assert "x floor" in out and "vs authors" in out


def test_compiled_baseline_needs_two_warmup_steps(tmp_path: Path) -> None:
    """Timing the compiled baseline's compilation is refused, not reported as a step time."""
    with pytest.raises(SystemExit, match="needs --warmup >= 2"):
        bench_step.main(
            ["--sizes", "tiny", "--backends", "compiled", "--warmup", "1", "--out", str(tmp_path)]
        )


def _run_module(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)}
    env.pop("TRITON_INTERPRET", None)  # the benchmark sets it itself where no GPU is present
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_host_overhead_smoke(tmp_path: Path) -> None:
    """``--host-overhead`` run tiny in a fresh process: one row per implementation and count,
    the slope between the two largest counts, and the targets' verdicts."""
    proc = _run_module(
        [
            "benchmarks.bench_step",
            "--host-overhead",
            "--counts",
            "2,3,5",
            "--numel",
            "8",
            "--steps",
            "6",
            "--warmup",
            "1",
            "--batch",
            "2",
            "--budget-s",
            "2",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out_dir = tmp_path / "results" / "host_overhead"
    csvs = list(out_dir.glob("host_overhead_cpu_*.csv"))
    assert len(csvs) == 1 and csvs[0].with_suffix(".md").is_file()
    with open(csvs[0]) as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == host_overhead.CSV_COLUMNS
        rows = list(reader)
    available = rows[0]["backends_available"].split()
    want = {f"xsam:{b}" for b in available if b != "cuda"} | {
        "torch-sgd-fused",
        "torch-sgd-foreach",
    }
    assert {r["impl"] for r in rows} == want
    assert "xsam:reference" in want
    for impl in want:
        mine = {int(r["n_tensors"]): r for r in rows if r["impl"] == impl}
        assert sorted(mine) == [2, 3, 5]
        for r in mine.values():
            assert r["torch_threads"] == "1" and r["numel_per_tensor"] == "8"
            assert 1 <= int(r["steps"]) <= 6
            assert 0 < float(r["p10_us"]) <= float(r["median_us"]) <= float(r["p90_us"])
            assert r["slope_between"] == "3-5"
            assert r["kernels"] == ("kernels no-op" if impl == "xsam:triton" else "")
            phases = (r["first_median_us"], r["second_median_us"])
            assert all(phases) == impl.startswith("xsam:")
        slope = (float(mine[5]["median_us"]) - float(mine[3]["median_us"])) / 2
        assert float(mine[2]["us_per_added_tensor"]) == pytest.approx(slope, rel=1e-6, abs=1e-6)
    assert "us per added tensor (3-5)" in proc.stdout
    verdicts = [
        line.split()
        for line in proc.stdout.splitlines()
        if line.startswith("xsam:") and line.split()[-1] in ("yes", "no")
    ]
    assert sorted(v[0] for v in verdicts) == sorted(2 * [i for i in want if i.startswith("xsam:")])
    for v in verdicts:
        row = next(r for r in rows if r["impl"] == v[0] and r["n_tensors"] == "5")
        if "torch-sgd-fused" in v:
            peer = next(r for r in rows if r["impl"] == "torch-sgd-fused" and r["n_tensors"] == "5")
            met = float(row["median_us"]) <= float(peer["median_us"])
        else:
            met = float(row["us_per_added_tensor"]) <= host_overhead.SLOPE_TARGET_US
        assert v[-1] == ("yes" if met else "no"), v


KERNEL_MODULE = """
import triton
import triton.language as tl


@triton.jit
def _twice(x):
    return x * 2


@triton.jit
def double_kernel(X, Y, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    tl.store(Y + offs, _twice(tl.load(X + offs, mask=mask)), mask=mask)


def double(x, y):
    double_kernel[(triton.cdiv(x.numel(), 16),)](x, y, x.numel(), BLOCK=16)
"""


def test_triton_launches_counted_run_or_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Launches are counted per kernel (helpers never), kernels run or are no-ops, and
    leaving the block restores them."""
    pytest.importorskip("triton")
    from benchmarks.triton_launches import KernelLaunches, find_kernels

    package = tmp_path / "launch_probe_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "kernels.py").write_text(textwrap.dedent(KERNEL_MODULE))
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # read when @triton.jit runs: CPU tensors
    monkeypatch.syspath_prepend(str(tmp_path))
    kernels = importlib.import_module("launch_probe_pkg.kernels")
    assert set(find_kernels("launch_probe_pkg")) == {"kernels._twice", "kernels.double_kernel"}
    x = torch.arange(40, dtype=torch.float32)
    for run in (True, False):
        y = torch.zeros(40)
        with KernelLaunches(run_kernels=run, package="launch_probe_pkg") as launches:
            kernels.double(x, y)
            kernels.double(x, y)
        assert launches.count == 2 and launches.by_kernel == {"kernels.double_kernel": 2}
        torch.testing.assert_close(y, 2 * x if run else torch.zeros(40))
        assert "run" not in vars(kernels.double_kernel)
    y = torch.zeros(40)
    kernels.double(x, y)  # restored: runs, uncounted
    torch.testing.assert_close(y, 2 * x)
    assert launches.count == 2
