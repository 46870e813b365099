"""Build of xsam-fast: the Python package plus optional compiled kernels.

Build switches (environment variables), all optional:
  XSAM_FAST_NO_EXT=1        build no extension at all (pure Python + Triton)
  FORCE_CUDA=1              build the CUDA extension even where no GPU is visible
  XSAM_FAST_NO_CUDA=1       never build the CUDA extension
  TORCH_CUDA_ARCH_LIST      CUDA targets (default here "8.0;9.0+PTX")
  MAX_JOBS                  parallel compile jobs (read by torch's BuildExtension)

Install with ``pip install --no-build-isolation .`` so the extension is compiled
against the torch that will import it. A failed or impossible extension build
never fails the install: the package then reports that backend unavailable,
with the reason (``xsam_fast.backend_status()``).
"""
from __future__ import annotations

import glob
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _extensions():
    """(ext_modules, cmdclass): empty when torch or the sources are missing."""
    if _flag("XSAM_FAST_NO_EXT"):
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        print("xsam-fast: torch is not importable at build time (build isolation?); "
              "building without the C++ extension", file=sys.stderr)
        return [], {}

    # no -std: torch adds the one its headers need; no-math-errno lets sqrt vectorise;
    # fp-contract=off: no fused multiply-add, one rounding per operation as in the reference
    cxx = ["-O3", "-g0", "-fopenmp", "-fno-math-errno", "-ffp-contract=off"]
    ext_modules = []
    cpu_sources = sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    if cpu_sources:
        ext_modules.append(CppExtension("xsam_fast._C", cpu_sources, extra_compile_args=cxx,
                                        extra_link_args=["-fopenmp"]))
    # CUDA: the kernels in one translation unit (csrc/cuda/xsam_kernels.cu) plus the
    # pybind11 bindings (csrc/cuda/bindings.cpp). No -std flag: torch adds the one its
    # headers need. No --use_fast_math: the kernels must round like torch (IEEE div
    # and sqrt in Adam, no flush of denormals) to match the reference backend.
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu"))
                          + glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
    want_cuda = not _flag("XSAM_FAST_NO_CUDA") and (torch.cuda.is_available() or _flag("FORCE_CUDA"))
    if cuda_sources and want_cuda and CUDA_HOME is not None and torch.version.cuda is not None:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        ext_modules.append(CUDAExtension(
            "xsam_fast._C_cuda", cuda_sources,
            extra_compile_args={"cxx": ["-O3", "-g0"],
                                "nvcc": ["-O3", "-lineinfo", "-fmad=false"]}))

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
                print(f"xsam-fast: WARNING: building the extensions failed ({exc}); the cpu "
                      "and cuda backends will report themselves unavailable", file=sys.stderr)
                failed.extend(self.extensions)
            self.extensions = [e for e in self.extensions if e not in failed]

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as exc:  # the package works without it
                print(f"xsam-fast: WARNING: building {ext.name} failed ({exc}); "
                      "that backend will report itself unavailable", file=sys.stderr)
                self._failed.append(ext)

    return ext_modules, {"build_ext": OptionalBuildExtension.with_options(use_ninja=False)}


ext_modules, cmdclass = _extensions()

setup(
    packages=["xsam_fast", "xsam_fast.backends", "xsam_fast.triton_kernels"],
    package_dir={"xsam_fast.triton_kernels": "triton_kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
