"""The wheel works on its own, away from the checkout.

Once per test session: the repository's files (tracked, plus untracked ones git does
not ignore) are copied to a temporary directory, so that no stale ``build/`` or
in-place ``.so`` can leak in; ``pip wheel --no-build-isolation --no-deps`` builds the
wheel there; the wheel, its ``train`` extra and the session's torch are installed
into a fresh ``python -m venv`` outside the checkout (pip's cache makes the
reinstall of torch a copy; ``--no-compile``: only the modules imported get
bytecode). Every command then runs in that environment from an empty temporary
directory, with no PYTHONPATH: the commands, a tiny training job
and one XSAM step of every backend the installed package lists.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import xsam_fast
from conftest import TOLERANCES, assert_params_close

ROOT = Path(__file__).resolve().parents[1]
#: test id -> torch dtype name
DTYPES = {"fp64": "float64", "fp32": "float32"}
#: variables that would change what is built or what the installed package offers
CLEARED_ENV = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "XSAM_FAST_NO_EXT", "XSAM_FAST_DISABLE")
#: tracked directory -> where its files sit in the wheel
PACKAGE_DIRS = {"xsam_fast": "xsam_fast", "triton_kernels": "xsam_fast/triton_kernels"}


@dataclass(frozen=True)
class Installed:
    """The built wheel and the virtual environment it is installed in."""

    wheel: Path
    venv: Path
    cwd: Path  # empty directory the commands run in

    def run(self, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run ``argv`` (a script name of the venv, or ``python``) there; output as text."""
        exe = self.venv / "bin" / argv[0]
        return subprocess.run(
            [str(exe), *argv[1:]],
            cwd=self.cwd,
            env=clean_env(self.venv),
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def clean_env(venv: Path | None = None) -> dict[str, str]:
    """This process's environment without :data:`CLEARED_ENV`; for commands in ``venv``, its
    scripts first on PATH and bytecode written (pip installs there without compiling it all)."""
    env = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}
    if venv is not None:
        env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def checked(done: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    assert done.returncode == 0, (
        f"{what} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done


def as_tensors(values: list[list[float]]) -> list[torch.Tensor]:
    """Flattened parameters as printed by :data:`STEP_PROBE`, as float64 tensors."""
    return [torch.tensor(v, dtype=torch.float64) for v in values]


def repository_files() -> list[str]:
    """Paths (relative to ROOT) of the tracked and the untracked-not-ignored files that exist."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the files of the repository are unknown")
    listing = checked(
        subprocess.run(
            [
                "git",
                "-C",
                str(ROOT),
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        ),
        "git ls-files",
    ).stdout
    return sorted({p for p in listing.split("\0") if p and (ROOT / p).is_file()})


def build_wheel(files: list[str], workdir: Path) -> Path:
    source, dist = workdir / "source", workdir / "dist"
    for rel in files:
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, source / rel)
    checked(
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-build-isolation",
                "--no-deps",
                "--wheel-dir",
                str(dist),
                str(source),
            ],
            cwd=workdir,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=900,
        ),
        "pip wheel",
    )
    wheels = list(dist.glob("xsam_fast-*.whl"))
    assert len(wheels) == 1, f"expected one wheel, found {wheels}"
    return wheels[0]


@pytest.fixture(scope="session")
def files() -> list[str]:
    return repository_files()


@pytest.fixture(scope="session")
def installed(files, tmp_path_factory) -> Installed:
    """The wheel, built once, installed with the train extra into a new venv."""
    workdir = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(files, workdir)
    venv = workdir / "venv"
    checked(
        subprocess.run(
            [sys.executable, "-m", "venv", str(venv)],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=300,
        ),
        "python -m venv",
    )
    checked(
        subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--no-input",
                "--no-compile",
                f"{wheel}[train]",
                f"torch=={torch.__version__}",
            ],
            cwd=workdir,
            env=clean_env(venv),
            capture_output=True,
            text=True,
            timeout=900,
        ),
        "pip install of the wheel",
    )
    cwd = workdir / "cwd"
    cwd.mkdir()
    return Installed(wheel=wheel, venv=venv, cwd=cwd)


def test_wheel_holds_every_package_file_and_nothing_else(installed, files):
    with zipfile.ZipFile(installed.wheel) as zf:
        names = set(zf.namelist())
    expected = {
        f"{dest}/{rel[len(src) + 1 :]}"
        for rel in files
        for src, dest in PACKAGE_DIRS.items()
        if rel.startswith(src + "/")
    }
    missing = sorted(expected - names)
    assert not missing, f"the wheel lacks {len(missing)} package files, first {missing[0]}"
    dist_info = f"xsam_fast-{xsam_fast.__version__}.dist-info"
    assert {n.split("/")[0] for n in names} == {"xsam_fast", dist_info}
    assert f"{dist_info}/licenses/LICENSE" in names
    assert [n for n in names if n.startswith("xsam_fast/_C.") and n.endswith(".so")], (
        "the wheel carries no compiled cpu extension (xsam_fast/_C*.so)"
    )


def test_installed_package_is_the_wheel(installed):
    probe = (
        "import importlib.metadata as md, importlib.util as u, xsam_fast; "
        "print(xsam_fast.__file__); print(md.version('xsam-fast'), xsam_fast.__version__); "
        "print([n for n in ('triton_kernels', 'benchmarks', 'tests') if u.find_spec(n)])"
    )
    out = checked(installed.run("python", "-c", probe), "import xsam_fast").stdout.splitlines()
    assert Path(out[0]).resolve().is_relative_to(installed.venv.resolve()), out[0]
    assert out[1] == f"{xsam_fast.__version__} {xsam_fast.__version__}"
    assert out[2] == "[]", f"top-level modules that should not be installed: {out[2]}"


@pytest.mark.parametrize(
    "argv",
    [("xsam-fast", "--help"), ("python", "-m", "xsam_fast", "--help")],
    ids=["script", "python-m"],
)
def test_help(installed, argv):
    out = checked(installed.run(*argv), " ".join(argv)).stdout
    assert out.startswith("usage: xsam-fast")
    for command in ("train", "plot", "diagnose", "bench"):
        assert command in out


def test_tiny_training_job(installed):
    out_dir = installed.cwd / "train_out"
    done = checked(
        installed.run(
            "xsam-fast",
            "train",
            "--epochs",
            "1",
            "--seeds",
            "1",
            "--bs",
            "256",
            "--width",
            "4",
            "--alpha_max",
            "1",
            "--alpha_delta",
            "0.25",
            "--threads",
            "1",
            "--no_progress",
            "--out",
            str(out_dir),
        ),
        "xsam-fast train",
    )
    lines = done.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| method")) + 2
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    methods = {line.split("|")[1].strip() for line in lines[start:end]}  # the results table
    assert methods == {"SGD", "SAM", "XSAM"}, done.stdout
    for name in ("log.jsonl", "metrics.csv", "summary.json", "training.png"):
        assert (out_dir / name).stat().st_size > 0, name


def test_bench_says_it_needs_the_source_tree(installed):
    done = installed.run("xsam-fast", "bench", "--sizes", "tiny")
    assert done.returncode == 2, done.stderr
    assert "python -m benchmarks.bench_step --sizes tiny" in done.stderr
    assert "Traceback" not in done.stderr


#: one XSAM step (SGD with momentum, alpha searched) of a small MLP per listed backend
#: and dtype, and of the reference backend on the same device; prints JSON
STEP_PROBE = """
import json, sys, torch, xsam_fast
from torch import nn
from xsam_fast.backends import get_backend

def step(backend, device, dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 3)).to(device, dtype)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(10, 6, generator=gen).to(device, dtype)
    y = torch.randint(0, 3, (10,), generator=gen).to(device)
    before = [p.detach().cpu().flatten().tolist() for p in model.parameters()]
    opt = xsam_fast.XSAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9,
                         backend=backend, model=model)
    loss = lambda: nn.functional.cross_entropy(model(x), y)
    def closure():
        opt.zero_grad(); value = loss(); value.backward(); return value
    opt.step(closure, search_loss=loss, update_alpha=True)
    after = [p.detach().cpu().flatten().tolist() for p in model.parameters()]
    return dict(before=before, after=after, alpha=float(opt.alpha))

def device_of(backend, dtype):
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        try:
            get_backend(backend, torch.device(device), dtype)
            return device
        except RuntimeError:
            pass
    return None

out = dict(available=xsam_fast.available_backends(), status=xsam_fast.backend_status(), steps={})
for dtype_name in sys.argv[1:]:
    dtype = getattr(torch, dtype_name)
    for backend in out["available"]:
        device = device_of(backend, dtype)
        if device is not None:
            out["steps"][f"{backend} {dtype_name}"] = dict(
                device=device, got=step(backend, device, dtype),
                want=step("reference", device, dtype))
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def steps(installed) -> dict:
    done = checked(installed.run("python", "-c", STEP_PROBE, *DTYPES.values()), "the step probe")
    return json.loads(done.stdout)


def test_cpu_backend_is_available(steps):
    assert "cpu" in steps["available"], f"cpu backend unavailable: {steps['status']['cpu']}"


def test_every_available_backend_ran(steps):
    ran = {key.split()[0] for key in steps["steps"]}
    assert ran == set(steps["available"]), f"listed {steps['available']}, stepped {sorted(ran)}"


@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_every_available_backend_steps_like_the_reference(steps, dtype_name):
    atol, rtol = TOLERANCES[getattr(torch, DTYPES[dtype_name])]
    ran = {
        key.split()[0]: run
        for key, run in steps["steps"].items()
        if key.endswith(f" {DTYPES[dtype_name]}")
    }
    assert "cpu" in ran and "reference" in ran, sorted(ran)
    for backend, run in ran.items():
        got, want = run["got"], run["want"]
        assert got["alpha"] == want["alpha"], backend
        assert_params_close(
            as_tensors(got["after"]),
            as_tensors(want["after"]),
            atol,
            rtol,
            what=f"{backend} on {run['device']}",
        )
        assert any(b != a for b, a in zip(got["before"], got["after"])), f"{backend}: nothing moved"
