"""The backends ``test_backend_contract.py`` runs, registered in ``backend_contract.BACKENDS``.

Each entry is a :class:`backend_contract.Target` when the backend runs here, or
the reason it does not (shown as the skip message). One entry per way a backend
can run: the C++ CPU kernels per instruction set this CPU has, Triton under its
CPU interpreter, the CUDA functors in a host emulation, and the Triton and CUDA
backends on a GPU. Targets that reload modules (Triton's interpreter) do so when
first used, and :func:`restore_defaults` (run after every contract test) undoes it.
"""

from __future__ import annotations

import sys

import torch

import xsam_fast
from backend_contract import BACKENDS, SMALL_SIZES, Target
from xsam_fast.backends.base import Backend
from xsam_fast.backends.reference import ReferenceBackend

# the reference against itself: proves the harness (every comparison must hold exactly)
BACKENDS["reference"] = Target(ReferenceBackend, sizes=tuple(SMALL_SIZES))


def _cpu_targets() -> None:
    status = xsam_fast.backend_status()["cpu"]
    if status:
        BACKENDS["cpu"] = status
        return
    from xsam_fast.backends.cpu import CpuBackend

    for isa in ("avx512", "avx2", "generic"):
        if isa not in CpuBackend.supported_isas():
            BACKENDS[f"cpu-{isa}"] = f"this CPU cannot run the {isa} kernels"
            continue

        def make(isa=isa) -> CpuBackend:
            CpuBackend.set_isa(isa)  # process-wide; every cpu target sets its own
            return CpuBackend()

        BACKENDS[f"cpu-{isa}"] = Target(make)


_cpu_targets()

#: chunk size of the interpreter target: tensors of SMALL_SIZES span several programs,
#: with full (aligned and misaligned) and partial chunks
INTERPRETER_BLOCK = 256


def _triton_interpreter() -> Backend:
    """The Triton backend with its kernels reloaded for the interpreter (on first use
    after :func:`restore_defaults`)."""
    import triton_modules

    module = triton_modules.backend_module()
    if not triton_modules.interpreted():
        module = triton_modules.reload(interpret=True)
    return module.TritonBackend(block=INTERPRETER_BLOCK)


def _triton_cuda() -> Backend:
    """The Triton backend with its kernels built for the GPU."""
    import triton_modules

    module = triton_modules.backend_module()
    if triton_modules.interpreted():
        module = triton_modules.reload(interpret=False)
    return module.TritonBackend()


def _triton_targets() -> None:
    try:
        import triton  # noqa: F401
    except Exception as exc:
        why = f"triton is not importable: {exc}"
        BACKENDS["triton-interpreter"] = BACKENDS["triton-cuda"] = why
        return
    BACKENDS["triton-interpreter"] = Target(_triton_interpreter, sizes=tuple(SMALL_SIZES))
    if not torch.cuda.is_available():
        BACKENDS["triton-cuda"] = "no CUDA device"
    else:
        BACKENDS["triton-cuda"] = xsam_fast.backend_status()["triton"] or Target(
            _triton_cuda, device="cuda"
        )


_triton_targets()


def _cuda_targets() -> None:
    import cuda_emulation

    why = cuda_emulation.unavailable()
    BACKENDS["cuda-emulated"] = why or Target(_emulated_cuda)
    status = xsam_fast.backend_status()["cuda"]
    if status:
        BACKENDS["cuda"] = status
        return
    from xsam_fast.backends.cuda import CudaBackend

    BACKENDS["cuda"] = Target(CudaBackend, device="cuda")


def _emulated_cuda():
    """The CUDA backend's code on the CPU, on the default emulated GPU."""
    import cuda_emulation

    backend = cuda_emulation.EmulatedCudaBackend()
    backend.set_device()
    return backend


_cuda_targets()


def restore_defaults() -> None:
    """Undo what the targets set process-wide (the CPU instruction set, the Triton
    kernels built for the interpreter)."""
    if not xsam_fast.backend_status()["cpu"]:
        from xsam_fast.backends.cpu import CpuBackend

        CpuBackend.set_isa("auto")
    if "triton_modules" in sys.modules:
        import triton_modules

        if triton_modules.interpreted() != (triton_modules.SESSION_SETTING == "1"):
            triton_modules.restore()
