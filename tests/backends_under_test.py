"""The backends ``test_backend_contract.py`` runs, registered in ``backend_contract.BACKENDS``.

Each entry is a :class:`backend_contract.Target` when the backend runs here, or
the reason it does not (shown as the skip message). One entry per way a backend
can run: the C++ CPU kernels per instruction set this CPU has, Triton under its
CPU interpreter, the CUDA functors in a host emulation, and the Triton and CUDA
backends on a GPU.
"""
from __future__ import annotations

import torch

import xsam_fast
from backend_contract import BACKENDS, SMALL_SIZES, Target
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

if not torch.cuda.is_available():
    BACKENDS["triton-cuda"] = "no CUDA device"


def restore_defaults() -> None:
    """Undo what the targets set process-wide (the CPU instruction set)."""
    if not xsam_fast.backend_status()["cpu"]:
        from xsam_fast.backends.cpu import CpuBackend

        CpuBackend.set_isa("auto")
