"""Compile check of the CUDA backend's sources, usable on machines without a GPU.

``nvcc -c`` on every ``csrc/cuda/*.cu`` (one target, sm_90) against the installed
torch's headers with the flags of ``setup.py`` (``-O3 -fmad=false``, no fast math), the
bindings ``csrc/cuda/*.cpp`` with the host C++ compiler, once per module; then:

* ptxas (``-v``): no kernel spills registers, and only the device-scalar kernels have a
  stack frame (libdevice's double-precision ``sin`` keeps a small array there for the
  argument reduction of huge arguments; one thread, once per step);
* the PTX kept from the same compile: no fused multiply-add in our kernels (``-fmad=false``
  keeps one rounding per operation, as the reference backend has), apart from the
  math library's own (``acos``/``sin`` inlined in ``update_scalars_kernel``, ``pow``) and
  Adam's explicit one (``torch.lerp`` is fused, in ATen and so in the reference);
* every ``xsam_cuda::`` function the bindings call is defined by the kernels' objects.

Linking needs a CUDA build of torch (libc10_cuda) and is left to ``setup.py`` on a CUDA
machine. Skipped only when nvcc is absent; fails with the compiler's stderr otherwise.
For both sm_80 and sm_90 by hand: ``benchmarks/cuda_compile_check.sh``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
from torch.utils.cpp_extension import include_paths

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
ARCH = "sm_90"

#: as torch's CUDAExtension passes them (setup.py adds -O3 -fmad=false), plus ptxas -v
DEFINES = ["-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C_cuda"]
NVCC_FLAGS = [
    "-std=c++20",
    "-O3",
    "-fmad=false",
    "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE",
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
    "--expt-relaxed-constexpr",
    "-Xcompiler",
    "-fPIC",
    "-Xptxas=-v",
]
#: kernels that may have a stack frame (and fused multiply-adds: the math library's)
SCALAR_KERNELS = ("ascent_scalars_kernel", "update_scalars_kernel", "plain_scalars_kernel")


def find_nvcc() -> str | None:
    nvcc = shutil.which("nvcc")
    if nvcc is None and os.environ.get("CUDA_HOME"):
        candidate = Path(os.environ["CUDA_HOME"]) / "bin" / "nvcc"
        nvcc = str(candidate) if candidate.exists() else None
    return nvcc


def include_flags() -> list[str]:
    return [f"-I{p}" for p in include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]


def nvcc_command(nvcc: str, source: Path, obj: Path, keep_dir: Path, arch: str = ARCH) -> list[str]:
    return [
        nvcc,
        "-c",
        str(source),
        "-o",
        str(obj),
        f"-arch={arch}",
        *NVCC_FLAGS,
        *DEFINES,
        "-keep",
        "-keep-dir",
        str(keep_dir),
        *include_flags(),
    ]


def cxx_command(source: Path, obj: Path) -> list[str]:
    cxx = os.environ.get("CXX", "c++")
    return [
        cxx,
        "-c",
        str(source),
        "-o",
        str(obj),
        "-std=c++20",
        "-O0",
        "-g0",
        "-fPIC",
        *DEFINES,
        *include_flags(),
    ]


def _run_all(commands: list[list[str]]) -> list[tuple[list[str], subprocess.CompletedProcess]]:
    """Runs the compilers side by side (CI has two cores); returns each result."""
    procs = [
        (cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        for cmd in commands
    ]
    results = []
    for cmd, proc in procs:
        out, err = proc.communicate(timeout=1800)
        results.append((cmd, subprocess.CompletedProcess(cmd, proc.returncode, out, err)))
    return results


def demangle(names: list[str]) -> list[str]:
    res = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True)
    out = res.stdout.splitlines()
    return out if res.returncode == 0 and len(out) == len(names) else names


def ptxas_properties(log: str) -> dict[str, tuple[int, int, int]]:
    """function -> (stack frame, spill stores, spill loads) bytes, from ``ptxas -v``."""
    found = re.findall(
        r"Function properties for (\S+)\s*\n\s*(\d+) bytes stack frame, "
        r"(\d+) bytes spill stores, (\d+) bytes spill loads",
        log,
    )
    names = demangle([f[0] for f in found])
    return {n: (int(f[1]), int(f[2]), int(f[3])) for n, f in zip(names, found)}


def ptx_functions(ptx: str) -> dict[str, str]:
    """function name -> body, for every ``.entry`` and ``.func`` of a PTX file."""
    bodies = re.split(r"\n(?=(?:\.visible |\.weak )?\.(?:entry|func)\b)", ptx)
    named = {}
    for body in bodies:
        m = re.match(r"(?:\.visible |\.weak )?\.(?:entry|func)\s+(?:\([^)]*\)\s*)?([\w$]+)", body)
        if m:
            named[m.group(1)] = body
    return dict(zip(demangle(list(named)), named.values()))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Compiles every source once: (tmp dir, .cu sources, .cpp sources, ptxas logs)."""
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip(
            "nvcc not found (neither on PATH nor in $CUDA_HOME/bin): "
            "the CUDA compile check needs the CUDA toolkit"
        )
    tmp = tmp_path_factory.mktemp("cuda_compile")
    cu_sources = sorted(CUDA_DIR.glob("*.cu"))
    cpp_sources = sorted(CUDA_DIR.glob("*.cpp"))
    assert cu_sources, f"no CUDA sources in {CUDA_DIR}"
    commands = []
    for s in cu_sources:
        (tmp / s.stem).mkdir()
        commands.append(nvcc_command(nvcc, s, tmp / (s.stem + ".cu.o"), tmp / s.stem))
    commands += [cxx_command(s, tmp / (s.stem + ".cpp.o")) for s in cpp_sources]
    failures, logs = [], {}
    for cmd, res in _run_all(commands):
        if res.returncode != 0:
            failures.append(f"$ {' '.join(cmd)}\n(exit {res.returncode})\n{res.stderr}")
        logs[Path(cmd[2]).stem] = res.stdout + res.stderr
    assert not failures, "CUDA backend sources do not compile:\n\n" + "\n\n".join(failures)
    return tmp, cu_sources, cpp_sources, logs


def test_no_spills_and_no_stack_outside_the_scalar_kernels(compiled):
    _, cu_sources, _, logs = compiled
    props = {}
    for s in cu_sources:
        props.update(ptxas_properties(logs[s.stem]))
    kernels = [n for n in props if "multi_tensor_kernel" in n]
    assert kernels, "ptxas -v reported no multi-tensor kernel"
    spills = [
        f"{n}: {p[1]} B spill stores, {p[2]} B spill loads"
        for n, p in props.items()
        if p[1] or p[2]
    ]
    assert not spills, "kernels spill registers:\n" + "\n".join(spills)
    stack = [
        f"{n}: {p[0]} B stack frame"
        for n, p in props.items()
        if p[0] and "xsam_cuda::" in n and not any(k in n for k in SCALAR_KERNELS)
    ]
    assert not stack, "kernels use local memory:\n" + "\n".join(stack)


def test_no_fused_multiply_add_in_the_kernels(compiled):
    tmp, cu_sources, _, _ = compiled
    functions = {}
    for s in cu_sources:
        functions.update(ptx_functions((tmp / s.stem / f"{s.stem}.ptx").read_text()))
    ours = {n: body for n, body in functions.items() if "xsam_cuda::" in n}
    assert any("multi_tensor_kernel" in n for n in ours), "no multi-tensor kernel in the PTX"
    exempt = ("update_scalars_kernel", "AdamOp<")
    fused = [
        f"{n}: {body.count('fma.rn.')} fma"
        for n, body in ours.items()
        if "fma.rn." in body and not any(e in n for e in exempt)
    ]
    assert not fused, "multiply-adds were contracted (is -fmad=false passed?):\n" + "\n".join(fused)


def _symbols(nm: str, obj: Path, undefined: bool) -> set[str]:
    flag = "--undefined-only" if undefined else "--defined-only"
    out = subprocess.run([nm, "-C", flag, str(obj)], capture_output=True, text=True, check=True)
    return {line.split(maxsplit=2)[-1] for line in out.stdout.splitlines() if line.strip()}


def test_bindings_call_only_defined_functions(compiled):
    tmp, cu_sources, cpp_sources, _ = compiled
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm not found: the symbol check needs binutils")
    assert cpp_sources, f"no bindings in {CUDA_DIR}"
    defined: set[str] = set()
    for s in cu_sources:
        defined |= _symbols(nm, tmp / (s.stem + ".cu.o"), undefined=False)
    missing = []
    for s in cpp_sources:
        needed = {
            sym
            for sym in _symbols(nm, tmp / (s.stem + ".cpp.o"), undefined=True)
            if sym.startswith("xsam_cuda::")
        }
        missing += [f"{s.name}: {sym}" for sym in sorted(needed - defined)]
    assert not missing, (
        "the bindings call functions the kernels do not define "
        "(declaration and definition disagree?):\n" + "\n".join(missing)
    )
