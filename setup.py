"""Build of xsam-fast: the Python package plus optional compiled kernels.

Build switches (environment variables), all optional:
  XSAM_FAST_NO_EXT=1        build no extension at all (pure Python + Triton)
  XSAM_FAST_NO_CUDA=1       never build the CUDA extension
  FORCE_CUDA=1              the CUDA extension is wanted: a warning, not a note, when it
                            cannot be built (it is built whenever CUDA_HOME and a CUDA build
                            of torch are present, GPU or not)
  TORCH_CUDA_ARCH_LIST      CUDA targets (default here "8.0;9.0+PTX")
  MAX_JOBS                  parallel compile jobs (ninja; without ninja torch compiles one
                            file at a time and ignores it)

Install with ``pip install --no-build-isolation .`` so the extension is compiled
against the torch that will import it. A failed or impossible extension build
never fails the install: the package then reports that backend unavailable,
with the reason (``xsam_fast.backend_status()``). The version is
``xsam_fast.__version__`` (read by pyproject.toml).
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import sysconfig

from setuptools import find_packages, setup

#: the top-level triton_kernels/ directory is installed as this package
TRITON_PACKAGE = "xsam_fast.triton_kernels"


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _say(message: str) -> None:
    print(f"xsam-fast: {message}", file=sys.stderr)


def _packages() -> list[str]:
    """Every package under xsam_fast/, plus triton_kernels/ (and its subpackages) inside it."""
    triton = [TRITON_PACKAGE] + [f"{TRITON_PACKAGE}.{p}" for p in find_packages("triton_kernels")]
    return find_packages(include=["xsam_fast", "xsam_fast.*"]) + triton


def _use_ninja() -> bool:
    """Whether ninja can run; puts the building environment's ninja on PATH if only it has one.

    ``pip install ninja`` places it next to the interpreter, which is not on PATH when
    pip runs from an environment that is not activated.
    """
    if shutil.which("ninja") is None:
        scripts = sysconfig.get_path("scripts")
        if shutil.which("ninja", path=scripts) is None:
            _say(
                "WARNING: ninja not found (pip install ninja): compiling one file at a time, "
                "MAX_JOBS is ignored"
            )
            return False
        os.environ["PATH"] = os.pathsep.join([scripts, os.environ.get("PATH", "")])
    return True


def _cuda_unbuildable_reason(torch, cuda_home: str | None) -> str:
    """Why the CUDA extension cannot be built here ("" when it can); asks for no GPU."""
    if _flag("XSAM_FAST_NO_CUDA"):
        return "XSAM_FAST_NO_CUDA is set"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is not a CUDA build"
    if cuda_home is None:
        return "no CUDA toolkit found (set CUDA_HOME, or put nvcc on PATH)"
    return ""


def _extensions():
    """(ext_modules, cmdclass): empty when torch or the sources are missing."""
    if _flag("XSAM_FAST_NO_EXT"):
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        _say(
            "torch is not importable at build time (build isolation?); "
            "building without the C++ extension"
        )
        return [], {}

    # no -std: torch adds the one its headers need; no-math-errno lets sqrt vectorise;
    # fp-contract=off: no fused multiply-add, one rounding per operation as in the reference
    cxx = ["-O3", "-g0", "-fopenmp", "-fno-math-errno", "-ffp-contract=off"]
    ext_modules = []
    cpu_sources = sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    if cpu_sources:
        ext_modules.append(
            CppExtension(
                "xsam_fast._C", cpu_sources, extra_compile_args=cxx, extra_link_args=["-fopenmp"]
            )
        )
    # CUDA: the kernels in one translation unit (csrc/cuda/xsam_kernels.cu) plus the
    # pybind11 bindings (csrc/cuda/bindings.cpp). No -std flag: torch adds the one its
    # headers need. No --use_fast_math: the kernels must round like torch (IEEE div
    # and sqrt in Adam, no flush of denormals) to match the reference backend.
    cuda_sources = sorted(
        glob.glob(os.path.join("csrc", "cuda", "*.cu"))
        + glob.glob(os.path.join("csrc", "cuda", "*.cpp"))
    )
    no_cuda = _cuda_unbuildable_reason(torch, CUDA_HOME)
    if cuda_sources and not no_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        ext_modules.append(
            CUDAExtension(
                "xsam_fast._C_cuda",
                cuda_sources,
                extra_compile_args={
                    "cxx": ["-O3", "-g0"],
                    "nvcc": ["-O3", "-lineinfo", "-fmad=false"],
                },
            )
        )
    elif cuda_sources:
        _say(
            f"{'WARNING: FORCE_CUDA=1 but ' if _flag('FORCE_CUDA') else ''}not building the "
            f"CUDA extension: {no_cuda}"
        )

    class OptionalBuildExtension(BuildExtension):
        """Builds each extension if it can; a failure is reported, not fatal.

        Two levels: torch checks the compiler once for all extensions (it runs
        ``$CXX --version``) before building any, and then each extension builds on
        its own. A failed extension is dropped from ``self.extensions``, so that
        the steps after the build (the in-place copy of editable installs, the
        list of outputs) do not look for its file.
        """

        def build_extensions(self):
            failed = self._failed = []
            try:
                super().build_extensions()
            except Exception as exc:  # no usable compiler: no extension at all
                _say(
                    f"WARNING: building the extensions failed ({exc}); the cpu "
                    "and cuda backends will report themselves unavailable"
                )
                failed.extend(self.extensions)
            self.extensions = [e for e in self.extensions if e not in failed]

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as exc:  # the package works without it
                _say(
                    f"WARNING: building {ext.name} failed ({exc}); "
                    "that backend will report itself unavailable"
                )
                self._failed.append(ext)

    return ext_modules, {"build_ext": OptionalBuildExtension.with_options(use_ninja=_use_ninja())}


ext_modules, cmdclass = _extensions()

setup(
    packages=_packages(),
    package_dir={TRITON_PACKAGE: "triton_kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
