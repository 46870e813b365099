"""setup.py: what it decides to build, and that a failing C++ build does not fail the build.

The decisions (which extensions, ninja or not) are read from one subprocess that runs
setup.py once per case with ``setuptools.setup`` replaced by a recorder, torch's
``torch.version.cuda`` and ``CUDA_HOME`` set by the case, and
``torch.cuda.is_available`` raising: asking for a GPU at install time is an error.

The failing build: the package tree is copied to a temporary directory and built in
place there with a compiler that always fails (``CC``/``CXX`` set to ``false``); the
build must succeed with a warning, and ``xsam_fast`` imported from that copy must
list the cpu backend as unavailable, with the reason, while the reference backend works
and ``backend="auto"`` warns that it fell back to it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAKE_CUDA_HOME = "/opt/no-such-cuda"  # only a path: nothing is compiled

#: runs setup.py for each case of argv[1] (JSON); prints {case: decisions} as JSON
DECISIONS_PROBE = r"""
import contextlib, io, json, os, runpy, sys
import setuptools, torch
import torch.utils.cpp_extension as cpp

def asked_for_a_gpu(*args, **kwargs):
    raise AssertionError("setup.py asked whether a GPU is visible")

torch.cuda.is_available = asked_for_a_gpu
recorded = {}
setuptools.setup = lambda **kwargs: recorded.update(kwargs)
results = {}
for name, case in json.loads(sys.argv[1]).items():
    recorded.clear()
    saved_env = dict(os.environ)
    os.environ.update(case["env"])
    torch.version.cuda, cpp.CUDA_HOME = case["torch_cuda"], case["cuda_home"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        runpy.run_path("setup.py", run_name="__main__")
        build_ext = recorded["cmdclass"].get("build_ext")
        use_ninja = build_ext(setuptools.Distribution()).use_ninja if build_ext else None
    results[name] = dict(extensions=[e.name for e in recorded["ext_modules"]], use_ninja=use_ninja,
                         arch_list=os.environ.get("TORCH_CUDA_ARCH_LIST"), stderr=err.getvalue())
    os.environ.clear()
    os.environ.update(saved_env)
print(json.dumps(results))
"""

BOTH = ["xsam_fast._C", "xsam_fast._C_cuda"]
#: case -> (torch.version.cuda, CUDA_HOME, environment, extensions, a line of stderr or "")
CASES = {
    "cuda-torch-and-toolkit": ("12.8", FAKE_CUDA_HOME, {}, BOTH, ""),
    "no-cuda-switch": (
        "12.8",
        FAKE_CUDA_HOME,
        {"XSAM_FAST_NO_CUDA": "1"},
        BOTH[:1],
        "not building the CUDA extension: XSAM_FAST_NO_CUDA is set",
    ),
    "cpu-torch": (None, FAKE_CUDA_HOME, {}, BOTH[:1], "is not a CUDA build"),
    "no-toolkit": ("12.8", None, {}, BOTH[:1], "no CUDA toolkit found"),
    "force-cuda-cpu-torch": (
        None,
        FAKE_CUDA_HOME,
        {"FORCE_CUDA": "1"},
        BOTH[:1],
        "WARNING: FORCE_CUDA=1 but not building the CUDA extension",
    ),
    "no-ext-switch": ("12.8", FAKE_CUDA_HOME, {"XSAM_FAST_NO_EXT": "1"}, [], ""),
}
BUILD_SWITCHES = ("XSAM_FAST_NO_EXT", "XSAM_FAST_NO_CUDA", "FORCE_CUDA", "TORCH_CUDA_ARCH_LIST")


@pytest.fixture(scope="module")
def decisions(tmp_path_factory) -> dict:
    """{case: decisions} for :data:`CASES`, plus "ninja-beside-python": PATH without ninja."""
    cases = {name: dict(torch_cuda=c[0], cuda_home=c[1], env=c[2]) for name, c in CASES.items()}
    empty = tmp_path_factory.mktemp("empty_path")
    cases["ninja-beside-python"] = dict(torch_cuda=None, cuda_home=None, env={"PATH": str(empty)})
    env = {k: v for k, v in os.environ.items() if k not in BUILD_SWITCHES}
    done = subprocess.run(
        [sys.executable, "-c", DECISIONS_PROBE, json.dumps(cases)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize("case", list(CASES))
def test_extensions_built_without_asking_for_a_gpu(decisions, case):
    *_, extensions, message = CASES[case]
    got = decisions[case]
    assert got["extensions"] == extensions, got["stderr"]
    assert message in got["stderr"]
    if "xsam_fast._C_cuda" in extensions:
        assert got["arch_list"] == "8.0;9.0+PTX"


def test_ninja_next_to_the_interpreter_is_used(decisions):
    scripts = sysconfig.get_path("scripts")
    if shutil.which("ninja", path=scripts) is None:
        pytest.skip(f"no ninja in {scripts} (pip install ninja)")
    got = decisions["ninja-beside-python"]
    assert got["use_ninja"] is True, got["stderr"]
    assert "ninja not found" not in got["stderr"]


def test_failing_compiler_still_builds(tmp_path: Path) -> None:
    false = shutil.which("false")
    assert false, "no `false` executable"
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    for name in ("csrc", "triton_kernels"):
        shutil.copytree(ROOT / name, tmp_path / name)
    shutil.copytree(
        ROOT / "xsam_fast",
        tmp_path / "xsam_fast",
        ignore=shutil.ignore_patterns("*.so", "__pycache__"),
    )
    env = dict(os.environ, CC=false, CXX=false, XSAM_FAST_NO_CUDA="1")
    build = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    assert "xsam-fast: WARNING: building" in build.stderr
    assert not list((tmp_path / "xsam_fast").glob("_C*.so"))

    # an editable install of this checkout would resolve xsam_fast._C from the checkout
    probe = (
        "import sys; sys.meta_path = [f for f in sys.meta_path "
        "if '__editable__' not in getattr(f, '__module__', '')]; "
        "import torch, xsam_fast; assert xsam_fast.__file__.startswith(sys.argv[1]); "
        "s = xsam_fast.backend_status(); "
        "print('cpu' in xsam_fast.available_backends(), repr(s['cpu'])); "
        "p = torch.nn.Parameter(torch.ones(3)); "
        "o = xsam_fast.XSAM([p], torch.optim.SGD, lr=0.1); "
        "p.grad = torch.ones(3); o.first_step(); p.grad = torch.ones(3); o.second_step(); "
        "print(p.tolist())"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(tmp_path)),
    )
    assert run.returncode == 0, run.stderr[-2000:]
    available, reason = run.stdout.splitlines()[0].split(" ", 1)
    assert available == "False" and "_C" in reason
    assert "backend='auto' runs the unfused reference path on cpu" in run.stderr, run.stderr
    # the reference backend stepped: G = g at alpha = 1, so p = 1 - lr * 1
    assert [float(v) for v in run.stdout.splitlines()[1].strip("[]").split(",")] == pytest.approx(
        [0.9, 0.9, 0.9], rel=1e-6
    )


def test_built_extensions_import():
    """A compiled extension next to the imported package must load: a failing module
    initialiser would otherwise turn its backend off and every test of it into a skip."""
    import importlib

    import xsam_fast

    built = sorted(Path(xsam_fast.__file__).parent.glob("_C*.so"))
    if not built:
        pytest.skip("no compiled extension next to the imported package (built without one)")
    for path in built:
        name = "xsam_fast." + path.name.split(".")[0]
        if name == "xsam_fast._C_cuda" and not torch_has_cuda():
            continue  # needs the CUDA runtime to load
        importlib.import_module(name)
    assert "cpu" in xsam_fast.available_backends(), xsam_fast.backend_status()["cpu"]


def test_import_error_text_names_the_cause():
    from xsam_fast.backends.extension import import_error_text

    try:
        try:
            raise AttributeError("module 'm' has no attribute 'X'")
        except AttributeError as cause:
            raise ImportError("initialization failed") from cause
    except ImportError as exc:
        text = import_error_text(exc)
    assert text == (
        "ImportError: initialization failed <- AttributeError: module 'm' has no attribute 'X'"
    )


def torch_has_cuda() -> bool:
    import torch

    return torch.version.cuda is not None


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"Install and run the test suite.*?```bash\n(.*?)\n```", readme, flags=re.S)
    assert found, "README: no test command after 'Install and run the test suite'"
    ci = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ci[-1] == found.group(1), ".ci/run's last command is not the README's test command"


def test_license_file_is_the_declared_license():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^license = "MIT"$', pyproject, flags=re.M)
    assert re.search(r'^license-files = \["LICENSE"\]$', pyproject, flags=re.M)
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 The xsam-fast authors" in text
