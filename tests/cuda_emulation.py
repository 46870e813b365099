"""The CUDA backend on the CPU: ``csrc/cuda/emulation/host_emulation.cu`` behind the v2 contract.

The library is compiled by nvcc as host code, once per test session, and loaded with
ctypes. It holds the extension's own layout check and work planner, phase dispatch,
grid walk, chunk loop, functors and device-scalar functions (and a mirror of the block
reduction), so :class:`EmulatedCudaBackend` runs the CUDA backend's host and kernel
code on CPU tensors; ``backends_under_test.py`` registers it as ``cuda-emulated``.
The argument checks of ``csrc/cuda/xsam_kernels.cu`` on tensors (sc, hyper, steps,
out) are mirrored here in Python; the bindings, streams and device copies run only on
a GPU.
"""

from __future__ import annotations

import atexit
import ctypes
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from xsam_fast.backends.base import NHYPER, NSCALARS, Backend
from xsam_fast.backends.packed import LayoutError, TensorList

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "csrc" / "cuda" / "emulation" / "host_emulation.cu"
DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
#: the GPU the emulation walks by default (odd sizes, so blocks take uneven item counts)
DEFAULT_SMS, DEFAULT_BLOCKS_PER_SM = 3, 2

_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_INT = ctypes.c_int
_D = ctypes.c_double
_ERR = [ctypes.c_char_p, _I64]
_SIGNATURES = {
    "xsam_emu_pack": (_INT, [_I64, _P, _P, _P, _P, _P, _P, _P, _P, _P] + _ERR),
    "xsam_emu_free": (None, [_P]),
    "xsam_emu_num_items": (_I64, [_P]),
    "xsam_emu_shares_layout": (_INT, [_P, _P]),
    "xsam_emu_items": (None, [_P, _P]),
    "xsam_emu_sumsq": (_INT, [_P, _P, _P, _INT, _D] + _ERR),
    "xsam_emu_final_sums": (_INT, [_P, _P, _P, _P, _INT, _D] + _ERR),
    "xsam_emu_ascent_scalars": (None, [_P, _INT, _INT]),
    "xsam_emu_update_scalars": (None, [_P, _INT]),
    "xsam_emu_plain_scalars": (None, [_P, _INT]),
    "xsam_emu_backup_ascent": (_INT, [_P, _P, _P, _P, _P, _INT, _D] + _ERR),
    "xsam_emu_write_point": (_INT, [_P, _P, _P, _P, _P, _D] + _ERR),
    "xsam_emu_write_grad_restore": (_INT, [_P, _P, _P, _P, _P, _D] + _ERR),
    "xsam_emu_sgd_update": (_INT, [_P, _P, _P, _P, _P, _P, _P] + [_INT] * 5 + [_D] + _ERR),
    "xsam_emu_adam_update": (_INT, [_P] * 7 + [_INT, _P, _P, _INT, _INT, _INT, _D] + _ERR),
    "xsam_emu_set_device": (None, [_INT, _INT]),
    "xsam_emu_launch_count": (_I64, []),
    "xsam_emu_last_grid": (_I64, []),
    "xsam_emu_constants": (ctypes.c_char_p, []),
}


def nvcc() -> str | None:
    return shutil.which("nvcc")


def unavailable() -> str:
    """Why the emulation cannot be built here ("" when it can)."""
    return "" if nvcc() else "nvcc not found: the host emulation of the CUDA backend is not built"


def build_command(lib: Path) -> list[str]:
    from torch.utils.cpp_extension import include_paths

    # host code only; -ffp-contract=off: one rounding per operation, as -fmad=false on the GPU
    return [
        nvcc(),
        "-shared",
        "-std=c++20",
        "-O2",
        "-Xcompiler",
        "-fPIC,-ffp-contract=off",
        "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE",
        "-D__CUDA_NO_HALF_OPERATORS__",
        "-D__CUDA_NO_HALF_CONVERSIONS__",
        "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
        "-D__CUDA_NO_HALF2_OPERATORS__",
        "--expt-relaxed-constexpr",
        *[f"-I{p}" for p in include_paths()],
        str(SOURCE),
        "-o",
        str(lib),
    ]


@lru_cache(maxsize=None)
def library() -> ctypes.CDLL:
    """The emulation library, compiled on first use (once per process)."""
    out_dir = Path(tempfile.mkdtemp(prefix="xsam_cuda_emulation_"))
    atexit.register(shutil.rmtree, out_dir, ignore_errors=True)
    lib_path = out_dir / "libxsam_cuda_emulation.so"
    cmd = build_command(lib_path)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        raise RuntimeError(f"the host emulation does not compile:\n$ {' '.join(cmd)}\n{res.stderr}")
    lib = ctypes.CDLL(str(lib_path))
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def constants() -> dict[str, int]:
    """The C++ constants under base.py's names (and CHUNK, THREADS)."""
    words = library().xsam_emu_constants().decode().split()
    return {k: int(v) for k, v in (w.split("=") for w in words)}


def _call(fn, *args) -> None:
    """Calls an emulation phase; raises its error (-2: LayoutError, -1: ValueError)."""
    err = ctypes.create_string_buffer(1024)
    rc = fn(*args, err, len(err))
    if rc == -2:
        raise LayoutError(err.value.decode())
    if rc != 0:
        raise ValueError(err.value.decode())


class EmulatedList(TensorList):
    """A list packed by the emulation: the tensors and the library's list handle."""

    __slots__ = ("handle", "_free")

    def __init__(self, tensors: Sequence[Tensor], handle: int) -> None:
        super().__init__(tensors)
        self.handle = handle
        self._free = library().xsam_emu_free  # kept: module globals may be gone at exit

    def __del__(self) -> None:
        self._free(self.handle)


def _handle(lst: TensorList | None) -> int | None:
    if lst is None:
        return None
    if not isinstance(lst, EmulatedList):
        raise LayoutError(f"a {type(lst).__name__} was not packed by the cuda-emulated backend")
    return lst.handle


def _f64(t: Tensor, numel: int, what: str) -> int:
    """The address of a contiguous float64 CPU tensor of ``numel`` elements (as the extension
    checks its CUDA tensors)."""
    if not (
        t.device.type == "cpu"
        and t.dtype == torch.float64
        and t.numel() == numel
        and t.is_contiguous()
    ):
        raise ValueError(
            f"{what} must be a contiguous float64 tensor of {numel} element(s); "
            f"got {t.dtype} of {t.numel()} on {t.device}"
        )
    return t.data_ptr()


def _eta(eta: float | None) -> float:
    return -1.0 if eta is None else float(eta)


class EmulatedCudaBackend(Backend):
    """The CUDA backend's host and kernel code on CPU tensors (tests only)."""

    name = "cuda-emulated"

    def __init__(self) -> None:
        self.lib = library()

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        why = unavailable()
        return not why, why

    def supports(self, device: torch.device, dtype: torch.dtype) -> bool:
        return torch.device(device).type == "cpu" and dtype in DTYPE_CODES

    # ------------------------------------------------------------------ the emulated GPU
    def set_device(
        self, sm_count: int = DEFAULT_SMS, blocks_per_sm: int = DEFAULT_BLOCKS_PER_SM
    ) -> None:
        self.lib.xsam_emu_set_device(sm_count, blocks_per_sm)

    def launch_count(self) -> int:
        return int(self.lib.xsam_emu_launch_count())

    def last_grid(self) -> int:
        return int(self.lib.xsam_emu_last_grid())

    def items(self, lst: EmulatedList) -> list[tuple[int, int, int]]:
        """The work items (start, tensor, len) of a packed list."""
        n = int(self.lib.xsam_emu_num_items(lst.handle))
        flat = (ctypes.c_int64 * (3 * n))()
        self.lib.xsam_emu_items(lst.handle, flat)
        return [tuple(flat[3 * i : 3 * i + 3]) for i in range(n)]

    def shares_layout(self, a: EmulatedList, b: EmulatedList) -> bool:
        return bool(self.lib.xsam_emu_shares_layout(a.handle, b.handle))

    # ------------------------------------------------------------------ lists
    def pack(self, tensors, like=None, *, grads=False) -> EmulatedList:
        tensors = tuple(tensors)
        for i, t in enumerate(tensors):
            if t.device.type != "cpu":
                raise LayoutError(f"tensor {i} is on {t.device}; the emulation steps CPU tensors")
        n = len(tensors)
        sizes = [(ctypes.c_int64 * max(t.dim(), 1))(*t.shape) for t in tensors]
        strides = [(ctypes.c_int64 * max(t.dim(), 1))(*t.stride()) for t in tensors]
        handle = ctypes.c_void_p()
        _call(
            self.lib.xsam_emu_pack,
            n,
            (ctypes.c_int64 * n)(*[0] * n),
            (ctypes.c_int * n)(*[DTYPE_CODES.get(t.dtype, -1) for t in tensors]),
            (ctypes.c_char_p * n)(*[str(t.dtype).encode() for t in tensors]),
            (ctypes.c_int64 * n)(*[t.dim() for t in tensors]),
            (ctypes.POINTER(ctypes.c_int64) * n)(*sizes),
            (ctypes.POINTER(ctypes.c_int64) * n)(*strides),
            (ctypes.c_int64 * n)(*[t.data_ptr() for t in tensors]),
            _handle(like),
            ctypes.byref(handle),
        )
        return EmulatedList(tensors, handle.value)

    # ------------------------------------------------------------------ reductions
    def sumsq(self, grads, out, *, accumulate, weights=None, eta=None):
        _call(
            self.lib.xsam_emu_sumsq,
            _handle(grads),
            _handle(weights),
            _f64(out, 1, "out"),
            int(accumulate),
            _eta(eta),
        )

    def final_sums(self, points, backups, grads, out, *, accumulate, eta=None):
        _call(
            self.lib.xsam_emu_final_sums,
            _handle(points),
            _handle(backups),
            _handle(grads),
            _f64(out, 3, "out"),
            int(accumulate),
            _eta(eta),
        )

    # ------------------------------------------------------------------ scalars
    def ascent_scalars(self, sc, *, first, check):
        self.lib.xsam_emu_ascent_scalars(_f64(sc, NSCALARS, "sc"), int(first), int(check))

    def update_scalars(self, sc, *, check):
        self.lib.xsam_emu_update_scalars(_f64(sc, NSCALARS, "sc"), int(check))

    def plain_scalars(self, sc, *, check):
        self.lib.xsam_emu_plain_scalars(_f64(sc, NSCALARS, "sc"), int(check))

    # ------------------------------------------------------------------ elementwise
    def backup_ascent(self, params, grads, backups, sc, hyper, *, backup, eta=None):
        _call(
            self.lib.xsam_emu_backup_ascent,
            _handle(params),
            _handle(grads),
            _handle(backups),
            _f64(sc, NSCALARS, "sc"),
            _f64(hyper, NHYPER, "hyper"),
            int(backup),
            _eta(eta),
        )

    def write_point(self, out, points, backups, grads, coeffs, *, eta=None):
        co = coeffs.to(torch.float64).contiguous()
        _call(
            self.lib.xsam_emu_write_point,
            _handle(out),
            _handle(points),
            _handle(backups),
            _handle(grads),
            _f64(co, 2, "coeffs"),
            _eta(eta),
        )

    def write_grad_restore(self, params, points, backups, grads, coeffs, *, eta=None):
        co = coeffs.to(torch.float64).contiguous()
        _call(
            self.lib.xsam_emu_write_grad_restore,
            _handle(params),
            _handle(points),
            _handle(backups),
            _handle(grads),
            _f64(co, 2, "coeffs"),
            _eta(eta),
        )

    def sgd_update(
        self,
        params,
        points,
        backups,
        grads,
        bufs,
        sc,
        hyper,
        *,
        weight_decay,
        momentum,
        nesterov,
        maximize,
        init_bufs,
        eta=None,
    ):
        _call(
            self.lib.xsam_emu_sgd_update,
            _handle(params),
            _handle(points),
            _handle(backups),
            _handle(grads),
            _handle(bufs),
            _f64(sc, NSCALARS, "sc"),
            _f64(hyper, NHYPER, "hyper"),
            int(weight_decay),
            int(momentum),
            int(nesterov),
            int(maximize),
            int(init_bufs),
            _eta(eta),
        )

    def adam_update(
        self,
        params,
        points,
        backups,
        grads,
        exp_avgs,
        exp_avg_sqs,
        steps,
        sc,
        hyper,
        *,
        weight_decay,
        decoupled,
        maximize,
        eta=None,
    ):
        if not (
            steps.dtype in (torch.float32, torch.float64)
            and steps.dim() == 1
            and steps.numel() == len(params)
            and steps.is_contiguous()
        ):
            raise ValueError(
                f"steps must be a contiguous 1-d float32 or float64 tensor of "
                f"{len(params)} elements"
            )
        _call(
            self.lib.xsam_emu_adam_update,
            _handle(params),
            _handle(points),
            _handle(backups),
            _handle(grads),
            _handle(exp_avgs),
            _handle(exp_avg_sqs),
            steps.data_ptr(),
            int(steps.dtype == torch.float64),
            _f64(sc, NSCALARS, "sc"),
            _f64(hyper, NHYPER, "hyper"),
            int(weight_decay),
            int(decoupled),
            int(maximize),
            _eta(eta),
        )
