"""``benchmarks/gpu_check.sh``, proven before a GPU is available: its dry run (every stage
on the CPU with tiny sizes), and its bookkeeping when stages fail or time runs out."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STAGES = [
    "install",
    "build",
    "gpu-tests",
    "contract",
    "bandwidth",
    "resnet18",
    "launches",
    "syncs",
    "compiled",
]
#: what comes back from the device machine: at most 8 files
FILES = {"gpu_check.log", "summary.md", "results.tar.gz"}

pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None,
    reason="needs bash and coreutils' timeout",
)


def _run(out: Path, *args: str, **env: str) -> tuple[int, str, dict[str, str]]:
    """Run the script; (exit status, summary text, {stage: status})."""
    proc = subprocess.run(
        ["bash", str(SCRIPT), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OUT": str(out), "PYTHON": sys.executable, **env},
    )
    assert {p.name for p in out.iterdir()} == FILES, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    table = dict(re.findall(r"^\| ([a-z0-9-]+) \| ([^|]+?) \| \d+ \| \d+ \|$", summary, re.M))
    assert list(table) == STAGES, summary
    return proc.returncode, summary, table


def test_dry_run(tmp_path: Path) -> None:
    """Every stage runs on the CPU and passes, or is skipped where only a GPU could run it."""
    rc, summary, table = _run(tmp_path, "--dry-run")
    assert table["install"] == table["build"] == "skipped"  # printed, not run
    for stage in ("gpu-tests", "contract", "bandwidth", "resnet18", "compiled"):
        assert table[stage] == "ok", (stage, summary)
    triton = re.search(r"^- xsam_fast backends: triton: (.*?)(, cuda:|$)", summary, re.M)
    assert triton, summary
    # launches and syncs need a GPU backend: Triton under its interpreter, where it runs
    expected = "ok" if triton.group(1) == "available" else "skipped"
    assert table["launches"] == expected and table["syncs"] == expected, summary
    assert rc == 0
    for line in (
        "- date: ",
        "- GPU: none visible to torch",
        "- driver: ",
        "- torch: ",
        "- triton: ",
        "- whole run: ",
    ):
        assert line in summary
    assert "collected" in summary  # the test stages collect only in a dry run
    if expected == "ok":
        assert "triton: launches per step the same for 3/62/300 tensors" in summary
    log = (tmp_path / "gpu_check.log").read_text()
    assert "dry run: not installing; on a GPU this runs: XSAM_FAST_NO_EXT=1 " in log
    assert "dry run: not installing; on a GPU this runs: FORCE_CUDA=1 " in log
    assert "--no-build-isolation --no-deps -e ." in log
    with tarfile.open(tmp_path / "results.tar.gz") as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert {"gpu-tests.xml", "contract.xml", "launches.txt", "syncs.txt"} <= names
    assert len([n for n in names if n.startswith("step_cpu_") and n.endswith(".csv")]) == 3
    assert any(n.startswith("step_cpu_") and n.endswith(".png") for n in names)
    assert re.search(r"^\| compiled:aot_eager \| tiny \| fp32 \|", summary, re.M)


def test_failing_stages_do_not_stop_the_later_ones(tmp_path: Path) -> None:
    """A Python that fails every command: each stage is recorded as failed, none is skipped,
    the exit status is non-zero, and the files are still written."""
    rc, summary, table = _run(tmp_path, PYTHON="false")
    assert rc != 0
    assert set(table.values()) == {"failed (exit 1)"}, summary
    assert "(the environment could not be read)" in summary


def test_no_time_left(tmp_path: Path) -> None:
    """With no time budget no stage starts, and each says so."""
    rc, summary, table = _run(tmp_path, "--dry-run", GPU_CHECK_TOTAL_S="0")
    assert rc != 0
    assert set(table.values()) == {"not run (no time left of 0 s)"}, summary
