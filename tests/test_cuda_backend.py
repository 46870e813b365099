"""The CUDA backend against the reference, phase by phase and as a whole optimizer.

Every test runs on two targets:

* ``cuda``: the real extension ``xsam_fast._C_cuda`` on a GPU; skipped where the
  backend is unavailable (no GPU, or the extension was not built), with the reason.
* ``emulated``: the same launch planner, per-chunk loops (16-byte packs and
  scalar tails) and phase functors, compiled by nvcc as host code
  (``csrc/cuda/emulation/host_emulation.cu``) and run on CPU tensors; skipped
  only when nvcc is absent. It cannot show device code generation, the block
  reductions, the cleanup kernel or streams: only the ``cuda`` target does.

Tolerances: float32 1e-6 relative (plus a tiny absolute term for cancellation),
float64 1e-12, 16-bit results within one unit in the last place of the stored
value; sums against a float64 ground truth.
"""
from __future__ import annotations

import ctypes
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from xsam_fast.backends.base import Backend
from xsam_fast.backends.reference import ReferenceBackend

ROOT = Path(__file__).resolve().parents[1]
EMULATION_SOURCE = ROOT / "csrc" / "cuda" / "emulation" / "host_emulation.cu"

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
CHUNK = 65536
#: sizes that do not divide the vector widths (2, 4, 8) or the chunk, and chunk edges
SIZES = [0, 1, 3, 4, 5, 7, 8, 9, 15, 17, 31, 33, 100, 1023, 4097, CHUNK - 1, CHUNK, CHUNK + 1,
         2 * CHUNK + 5]


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------- emulation
_EMU_DTYPE = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
_PHASE = dict(sumsq=0, ascent=1, backup_ascent=2, final_sums=3, write_point=4,
              write_grad_restore=5, sgd_plain=6, sgd_init=7, sgd_momentum=8, adam=9)


def _build_emulation(out_dir: Path) -> ctypes.CDLL:
    from torch.utils.cpp_extension import include_paths

    nvcc = shutil.which("nvcc")
    lib = out_dir / "libxsam_cuda_emulation.so"
    cmd = [nvcc, "-shared", "-std=c++20", "-O2", "-Xcompiler", "-fPIC", "-arch=sm_90",
           "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE", "-D__CUDA_NO_HALF_OPERATORS__",
           "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
           "-D__CUDA_NO_HALF2_OPERATORS__", "--expt-relaxed-constexpr",
           *[f"-I{p}" for p in include_paths()], str(EMULATION_SOURCE), "-o", str(lib)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"host emulation does not compile:\n$ {' '.join(cmd)}\n{res.stderr}"
    dll = ctypes.CDLL(str(lib))
    dll.xsam_emu_run.restype = ctypes.c_int64
    dll.xsam_emu_run.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_void_p,
                                 ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                 ctypes.c_void_p, ctypes.c_int64, ctypes.c_double]
    for name in ("xsam_emu_chunk", "xsam_emu_max_blocks"):
        getattr(dll, name).restype = ctypes.c_int64
    dll.xsam_emu_max_tensors.restype = ctypes.c_int64
    dll.xsam_emu_max_tensors.argtypes = [ctypes.c_int]
    return dll


class EmulatedCudaBackend(Backend):
    """The CUDA backend's host code and functors, run on CPU tensors (tests only)."""

    name = "cuda-emulated"

    def __init__(self, dll: ctypes.CDLL):
        self.dll = dll
        self.launches = 0

    @classmethod
    def is_available(cls):
        return True, ""

    def supports(self, device, dtype):
        return torch.device(device).type == "cpu" and dtype in _EMU_DTYPE

    def launch_count(self) -> int:
        return self.launches

    def _run(self, phase, lists, scalar=None, hyper=(), nsums=0, eta=None):
        first = lists[0]
        dtype = first[0].dtype
        n = len(first)
        for lst in lists:
            assert len(lst) == n
            for t, ref in zip(lst, first):
                assert t.dtype == dtype and t.is_contiguous() and t.numel() == ref.numel()
        ptrs = (ctypes.c_void_p * (len(lists) * n))(*[t.data_ptr() for lst in lists for t in lst])
        numels = (ctypes.c_int64 * n)(*[t.numel() for t in first])
        hyp = (ctypes.c_double * max(len(hyper), 1))(*[float(h) for h in hyper])
        stride = sum((t.numel() + CHUNK - 1) // CHUNK for t in first)
        partials = torch.zeros(max(nsums, 1) * max(stride, 1), dtype=_acc(dtype))
        if scalar is not None:
            scalar = scalar.detach().to("cpu", _acc(dtype)).contiguous()
        launches = self.dll.xsam_emu_run(
            _PHASE[phase], _EMU_DTYPE[dtype], n, ptrs, numels,
            None if scalar is None else scalar.data_ptr(), hyp, partials.data_ptr(), stride,
            -1.0 if eta is None else float(eta))
        assert launches >= 0
        # a reduction on the GPU adds one cleanup launch
        self.launches += launches + (1 if nsums else 0)
        if nsums:
            return partials[: nsums * stride].view(nsums, stride).sum(1) if stride else \
                torch.zeros(nsums, dtype=_acc(dtype))
        return None

    def sumsq(self, tensors, *, weights=None, eta=None):
        if not tensors:
            return torch.zeros((), dtype=torch.float32)
        lists = [list(tensors)] + ([list(weights)] if eta is not None else [])
        return self._run("sumsq", lists, nsums=1, eta=eta).reshape(())

    def backup_ascent(self, params, grads, backups, scale, backup, *, eta=None):
        if params:
            keep = backup or eta is not None
            lists = [list(params), list(grads)] + ([list(backups)] if keep else [])
            self._run("backup_ascent" if backup else "ascent", lists, scale, eta=eta)

    def final_sums(self, points, backups, grads, *, eta=None):
        if not points:
            return torch.zeros(3, dtype=torch.float32)
        return self._run("final_sums", [list(points), list(backups), list(grads)], nsums=3,
                         eta=eta)

    def write_point(self, out, points, backups, grads, coeffs, *, eta=None):
        if out:
            self._run("write_point", [list(out), list(points), list(backups), list(grads)], coeffs,
                      eta=eta)

    def write_grad_restore(self, params, points, backups, grads, coeffs, *, eta=None):
        if params:
            self._run("write_grad_restore",
                      [list(params), list(points), list(backups), list(grads)], coeffs, eta=eta)

    def sgd_update(self, params, points, backups, grads, bufs, coeffs, *, lr, weight_decay,
                   momentum, dampening, nesterov, maximize, init_bufs, eta=None):
        if not params:
            return
        lists = [list(params), list(points), list(backups), list(grads)]
        if momentum == 0:
            phase = "sgd_plain"
        else:
            phase = "sgd_init" if init_bufs else "sgd_momentum"
            lists.append(list(bufs))
        self._run(phase, lists, coeffs,
                  (lr, weight_decay, momentum, dampening, nesterov, maximize), eta=eta)

    def adam_update(self, params, points, backups, grads, exp_avgs, exp_avg_sqs, coeffs, *, lr,
                    beta1, beta2, eps, weight_decay, decoupled, maximize, step_size,
                    bias_correction2_sqrt, eta=None):
        if params:
            self._run("adam", [list(params), list(points), list(backups), list(grads),
                               list(exp_avgs), list(exp_avg_sqs)], coeffs,
                      (lr, beta1, beta2, eps, weight_decay, decoupled, maximize, step_size,
                       bias_correction2_sqrt), eta=eta)


# --------------------------------------------------------------------------- targets
class Target:
    def __init__(self, backend: Backend, device: torch.device, max_tensors=None,
                 max_blocks=None):
        self.backend = backend
        self.device = device
        self.max_tensors = max_tensors  # depth -> tensors per launch, when known
        self.max_blocks = max_blocks


@pytest.fixture(scope="module", params=["cuda", "emulated"])
def target(request, tmp_path_factory):
    if request.param == "cuda":
        try:
            from xsam_fast.backends.cuda import CudaBackend
        except Exception as exc:  # pragma: no cover - the module itself never raises
            pytest.skip(f"cuda backend not importable: {exc}")
        ok, why = CudaBackend.is_available()
        if not ok:
            pytest.skip(f"cuda backend unavailable here: {why}")
        emu = _emulation(tmp_path_factory)
        return Target(CudaBackend(), torch.device("cuda"),
                      emu.max_tensors if emu else None, emu.max_blocks if emu else None)
    emu = _emulation(tmp_path_factory)
    if emu is None:
        pytest.skip("nvcc not found: the host emulation of the CUDA kernels cannot be built")
    return emu


_EMU_CACHE: dict[str, Target | None] = {}


def _emulation(tmp_path_factory) -> Target | None:
    if "t" not in _EMU_CACHE:
        if shutil.which("nvcc") is None:
            _EMU_CACHE["t"] = None
        else:
            dll = _build_emulation(tmp_path_factory.mktemp("cuda_emulation"))
            _EMU_CACHE["t"] = Target(
                EmulatedCudaBackend(dll), torch.device("cpu"),
                {d: dll.xsam_emu_max_tensors(d) for d in range(1, 7)}, dll.xsam_emu_max_blocks())
    return _EMU_CACHE["t"]


# --------------------------------------------------------------------------- helpers
def _tensors(sizes, dtype, device, seed, misaligned=False, scale=1.0):
    """Random contiguous tensors; with ``misaligned`` each one starts one element into
    its storage, so that no pointer is 16-byte aligned and the scalar path runs."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        off = 1 if misaligned else 0
        flat = (torch.randn(n + off, generator=gen, dtype=torch.float64) * scale).to(dtype)
        out.append(flat.to(device)[off:])
    return out


def _clone(ts):
    return [t.clone() for t in ts]


def _ulp_close(actual, expected, what):
    """fp32/fp64: relative closeness; 16-bit: within one ulp of the stored value."""
    dtype = expected.dtype
    a = actual.double().cpu()
    e = expected.double().cpu()
    # absolute term: fp32 (fp64) intermediates may round differently (FMA contraction on
    # the GPU), which shows in results that cancel to much less than the tensor's scale
    amax = float(e.abs().max()) if e.numel() else 0.0
    if dtype in (torch.float16, torch.bfloat16):
        fin = torch.finfo(dtype)
        # eps * |e| >= 1 ulp of e for normal numbers; the smallest subnormal below that
        tol = torch.clamp(fin.eps * e.abs(), min=fin.smallest_normal * fin.eps) + 1e-6 * amax
    elif dtype == torch.float32:
        tol = 1e-6 * e.abs() + 1e-6 * amax + 1e-30
    else:
        tol = 1e-12 * e.abs() + 1e-14 * amax + 1e-300
    bad = ~((a - e).abs() <= tol) & ~(a.isnan() & e.isnan())
    if bad.any():
        idx = bad.nonzero().flatten()[:5].tolist()
        detail = ", ".join(f"[{i}] got {a[i].item()!r} want {e[i].item()!r}" for i in idx)
        pytest.fail(f"{what} ({dtype}): {int(bad.sum())} of {a.numel()} elements off: {detail}")


def _assert_lists_close(actual, expected, what):
    for i, (a, e) in enumerate(zip(actual, expected)):
        _ulp_close(a, e, f"{what}[{i}] (numel {e.numel()})")


def _sum_close(got, truth, magnitude, dtype, what):
    rel = 1e-10 if dtype == torch.float64 else 1e-5
    err = abs(float(got) - float(truth))
    assert err <= rel * float(magnitude) + 1e-30, f"{what}: got {float(got)!r}, want {float(truth)!r}"


def _coeffs(dtype, device, seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(2, generator=gen, dtype=torch.float64) * 2 - 0.5).to(device, _acc(dtype))


REF = ReferenceBackend()
IDS = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16",
       torch.float64: "fp64"}
dtype_param = pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: IDS[d])
aligned_param = pytest.mark.parametrize("misaligned", [False, True],
                                        ids=["aligned", "misaligned"])


# --------------------------------------------------------------------------- phases
@dtype_param
@aligned_param
def test_sumsq(target, dtype, misaligned):
    ts = _tensors(SIZES, dtype, target.device, 1, misaligned)
    got = target.backend.sumsq(ts)
    assert got.shape == () and got.dtype == _acc(dtype)
    truth = sum(float((t.double() ** 2).sum()) for t in ts)
    _sum_close(got, truth, truth, dtype, "sumsq")
    assert float(target.backend.sumsq([]).item()) == 0.0
    empty = target.backend.sumsq([torch.empty(0, dtype=dtype, device=target.device)])
    assert float(empty) == 0.0


@dtype_param
@aligned_param
def test_final_sums(target, dtype, misaligned):
    dev = target.device
    backups = _tensors(SIZES, dtype, dev, 2, misaligned)
    points = [b + d for b, d in zip(backups, _tensors(SIZES, dtype, dev, 3, misaligned, 0.1))]
    grads = _tensors(SIZES, dtype, dev, 4, misaligned)
    got = target.backend.final_sums(points, backups, grads)
    assert got.shape == (3,) and got.dtype == _acc(dtype)
    g = [x.double() for x in grads]
    d = [x.double() - b.double() for x, b in zip(points, backups)]
    gg = sum(float((x * x).sum()) for x in g)
    dd = sum(float((x * x).sum()) for x in d)
    dg = sum(float((x * y).sum()) for x, y in zip(d, g))
    mag = sum(float((x * y).abs().sum()) for x, y in zip(d, g))
    _sum_close(got[0], gg, gg, dtype, "||g||^2")
    _sum_close(got[1], dd, dd, dtype, "||d||^2")
    _sum_close(got[2], dg, mag, dtype, "<d, g>")


@dtype_param
@aligned_param
@pytest.mark.parametrize("backup", [True, False], ids=["backup", "no-backup"])
def test_backup_ascent(target, dtype, misaligned, backup):
    dev = target.device
    params = _tensors(SIZES, dtype, dev, 5, misaligned)
    grads = _tensors(SIZES, dtype, dev, 6, misaligned)
    backups = [torch.full_like(p, 7.0) for p in params]
    scale = torch.tensor(0.37, dtype=_acc(dtype), device=dev)
    ref_p, ref_b = _clone(params), _clone(backups)
    REF.backup_ascent(ref_p, grads, ref_b, scale, backup)
    original = _clone(params)
    target.backend.backup_ascent(params, grads, backups, scale, backup)
    _assert_lists_close(params, ref_p, "params")
    for b, want in zip(backups, original if backup else ref_b):
        assert torch.equal(b, want), "backups must be an exact copy (or untouched)"


@dtype_param
@aligned_param
def test_write_point(target, dtype, misaligned):
    dev = target.device
    backups = _tensors(SIZES, dtype, dev, 7, misaligned)
    points = _tensors(SIZES, dtype, dev, 8, misaligned)
    grads = _tensors(SIZES, dtype, dev, 9, misaligned)
    out = [torch.zeros_like(p) for p in points]
    co = _coeffs(dtype, dev, 10)
    ref = _clone(out)
    REF.write_point(ref, points, backups, grads, co)
    target.backend.write_point(out, points, backups, grads, co)
    _assert_lists_close(out, ref, "out")


@dtype_param
@aligned_param
def test_write_grad_restore(target, dtype, misaligned):
    dev = target.device
    backups = _tensors(SIZES, dtype, dev, 11, misaligned)
    params = _tensors(SIZES, dtype, dev, 12, misaligned)
    grads = _tensors(SIZES, dtype, dev, 13, misaligned)
    co = _coeffs(dtype, dev, 14)
    ref_p, ref_g = _clone(params), _clone(grads)
    REF.write_grad_restore(ref_p, ref_p, backups, ref_g, co)  # points is params, as in a step
    target.backend.write_grad_restore(params, params, backups, grads, co)
    _assert_lists_close(grads, ref_g, "grads")
    for p, b in zip(params, backups):
        assert torch.equal(p, b), "params must be restored exactly"


SGD_CASES = {
    "plain": dict(momentum=0.0, dampening=0.0, nesterov=False, maximize=False, weight_decay=0.0),
    "wd-maximize": dict(momentum=0.0, dampening=0.0, nesterov=False, maximize=True,
                        weight_decay=1e-2),
    "momentum": dict(momentum=0.9, dampening=0.0, nesterov=False, maximize=False,
                     weight_decay=5e-4),
    "dampening": dict(momentum=0.9, dampening=0.1, nesterov=False, maximize=True,
                      weight_decay=0.0),
    "nesterov": dict(momentum=0.9, dampening=0.0, nesterov=True, maximize=False,
                     weight_decay=1e-3),
}


@dtype_param
@aligned_param
@pytest.mark.parametrize("case", list(SGD_CASES))
@pytest.mark.parametrize("init_bufs", [True, False], ids=["init", "update"])
def test_sgd_update(target, dtype, misaligned, case, init_bufs):
    hyper = SGD_CASES[case]
    if hyper["momentum"] == 0 and init_bufs:
        pytest.skip("init_bufs only matters with momentum")
    dev = target.device
    backups = _tensors(SIZES, dtype, dev, 15, misaligned)
    params = [b + d for b, d in zip(backups, _tensors(SIZES, dtype, dev, 16, misaligned, 0.1))]
    grads = _tensors(SIZES, dtype, dev, 17, misaligned)
    bufs = (_tensors(SIZES, dtype, dev, 18, misaligned) if hyper["momentum"] else [])
    co = _coeffs(dtype, dev, 19)
    ref_p, ref_bufs = _clone(params), _clone(bufs)
    kw = dict(lr=0.05, init_bufs=init_bufs, **hyper)
    REF.sgd_update(ref_p, ref_p, backups, grads, ref_bufs, co, **kw)
    target.backend.sgd_update(params, params, backups, grads, bufs, co, **kw)
    _assert_lists_close(params, ref_p, "params")
    _assert_lists_close(bufs, ref_bufs, "momentum buffers")


ADAM_CASES = {
    "adam": dict(weight_decay=0.0, decoupled=False, maximize=False),
    "adam-l2": dict(weight_decay=1e-2, decoupled=False, maximize=True),
    "adamw": dict(weight_decay=1e-2, decoupled=True, maximize=False),
}


@dtype_param
@aligned_param
@pytest.mark.parametrize("case", list(ADAM_CASES))
def test_adam_update(target, dtype, misaligned, case):
    dev = target.device
    backups = _tensors(SIZES, dtype, dev, 20, misaligned)
    params = [b + d for b, d in zip(backups, _tensors(SIZES, dtype, dev, 21, misaligned, 0.1))]
    grads = _tensors(SIZES, dtype, dev, 22, misaligned)
    m = _tensors(SIZES, dtype, dev, 23, misaligned, 0.1)
    v = [x.abs() for x in _tensors(SIZES, dtype, dev, 24, misaligned, 0.01)]
    co = _coeffs(dtype, dev, 25)
    beta1, beta2, step, lr = 0.9, 0.999, 3, 1e-3
    kw = dict(lr=lr, beta1=beta1, beta2=beta2, eps=1e-8, step_size=lr / (1 - beta1**step),
              bias_correction2_sqrt=(1 - beta2**step) ** 0.5, **ADAM_CASES[case])
    ref_p, ref_m, ref_v = _clone(params), _clone(m), _clone(v)
    REF.adam_update(ref_p, ref_p, backups, grads, ref_m, ref_v, co, **kw)
    target.backend.adam_update(params, params, backups, grads, m, v, co, **kw)
    _assert_lists_close(m, ref_m, "exp_avg")
    _assert_lists_close(v, ref_v, "exp_avg_sq")
    _assert_lists_close(params, ref_p, "params")


# --------------------------------------------------------------------------- ASAM (eta)
ASAM_ETA = 0.05
#: fewer elements than SIZES (the emulation is slow), still odd sizes, chunk edges and a tail
ASAM_SIZES = [0, 1, 3, 5, 7, 9, 17, 100, 1023, 4097, CHUNK + 1]


def _asam_case(dtype, dev, misaligned, seed):
    """theta_0 with values near 0 too (T ~ eta there), ascent points, gradients."""
    backups = [(b.double() * torch.linspace(0, 1, b.numel(), dtype=torch.float64).to(b.device)
                ** 4).to(dtype) for b in _tensors(ASAM_SIZES, dtype, dev, seed, misaligned)]
    grads = _tensors(ASAM_SIZES, dtype, dev, seed + 1, misaligned)
    points = [(b.double() + 0.05 * g.double()).to(dtype) for b, g in zip(backups, grads)]
    return backups, points, grads


@dtype_param
@aligned_param
def test_asam_sums(target, dtype, misaligned):
    dev = target.device
    backups, points, grads = _asam_case(dtype, dev, misaligned, 60)
    got = target.backend.sumsq(grads, weights=backups, eta=ASAM_ETA)
    want = REF.sumsq(grads, weights=backups, eta=ASAM_ETA)
    _sum_close(got, want, want, dtype, "||T g||^2")
    got = target.backend.final_sums(points, backups, grads, eta=ASAM_ETA)
    want = REF.final_sums(points, backups, grads, eta=ASAM_ETA)
    mag = sum(float(((x.double() - b.double()) * g.double()).abs().sum())
              for x, b, g in zip(points, backups, grads))
    for k, what in enumerate(["||T g||^2", "||d/T||^2"]):
        _sum_close(got[k], want[k], want[k], dtype, what)
    _sum_close(got[2], want[2], mag, dtype, "<d, g>")


@dtype_param
@aligned_param
@pytest.mark.parametrize("phase", ["backup_ascent", "ascent", "write_point", "write_grad_restore",
                                   "sgd_update", "adam_update"])
def test_asam_elementwise_phases(target, dtype, misaligned, phase):
    dev = target.device
    backups, points, grads = _asam_case(dtype, dev, misaligned, 61)
    co = _coeffs(dtype, dev, 62)
    m = _tensors(ASAM_SIZES, dtype, dev, 63, misaligned, 0.1)
    v = [x.abs() for x in _tensors(ASAM_SIZES, dtype, dev, 64, misaligned, 0.01)]
    cases = [dict(p=_clone(points), b=_clone(backups), g=_clone(grads), m=_clone(m), v=_clone(v))
             for _ in range(2)]
    for backend, c in zip((target.backend, REF), cases):
        if phase in ("backup_ascent", "ascent"):
            if phase == "backup_ascent":  # T must come from the params (theta_0 then)
                c["b"] = [torch.full_like(b, 7.0) for b in c["b"]]
            scale = torch.tensor(0.37, dtype=_acc(dtype), device=dev)
            backend.backup_ascent(c["p"], c["g"], c["b"], scale, phase == "backup_ascent",
                                  eta=ASAM_ETA)
        elif phase == "write_point":
            out = [torch.zeros_like(p) for p in c["p"]]
            backend.write_point(out, c["p"], c["b"], c["g"], co, eta=ASAM_ETA)
            c["p"] = out
        elif phase == "write_grad_restore":
            backend.write_grad_restore(c["p"], c["p"], c["b"], c["g"], co, eta=ASAM_ETA)
        elif phase == "sgd_update":
            backend.sgd_update(c["p"], c["p"], c["b"], c["g"], c["m"], co, lr=0.05,
                               init_bufs=False, eta=ASAM_ETA, **SGD_CASES["nesterov"])
        else:
            backend.adam_update(c["p"], c["p"], c["b"], c["g"], c["m"], c["v"], co, lr=1e-3,
                                beta1=0.9, beta2=0.999, eps=1e-8, step_size=1e-2,
                                bias_correction2_sqrt=0.05, eta=ASAM_ETA, **ADAM_CASES["adamw"])
    for key in cases[0]:
        _assert_lists_close(cases[0][key], cases[1][key], f"{phase}: {key}")


# --------------------------------------------------------------------------- chunker
def test_many_tensors_and_launch_count(target):
    """Launches do not grow with the tensor count until the argument table is full."""
    be, dev = target.backend, target.device
    if not hasattr(be, "launch_count"):
        pytest.skip("this backend does not count its launches")
    dtype = torch.float32

    def launches(fn):
        before = be.launch_count()
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return be.launch_count() - before

    scale = torch.tensor(0.5, dtype=dtype, device=dev)
    few = _tensors([3, 100, 5000], dtype, dev, 30)
    many = _tensors([(7 * i) % 300 + 1 for i in range(40)], dtype, dev, 31)
    assert launches(lambda: be.sumsq(few)) == launches(lambda: be.sumsq(many)) == 2  # + cleanup
    assert launches(lambda: be.backup_ascent(few, few, _clone(few), scale, True)) == 1
    assert launches(lambda: be.backup_ascent(many, _clone(many), _clone(many), scale, True)) == 1

    if target.max_tensors is None:
        return
    # more tensors than the depth-3 table holds: ceil(n / max) launches, every element once
    n = 2 * target.max_tensors[3] + 5
    params = _tensors([(13 * i) % 70 + 1 for i in range(n)], dtype, dev, 32)
    grads = _tensors([p.numel() for p in params], dtype, dev, 33)
    backups = [torch.zeros_like(p) for p in params]
    ref = _clone(params)
    REF.backup_ascent(ref, grads, [torch.zeros_like(p) for p in params], scale, True)
    original = _clone(params)
    assert launches(lambda: be.backup_ascent(params, grads, backups, scale, True)) == 3
    _assert_lists_close(params, ref, "params")
    assert all(torch.equal(b, o) for b, o in zip(backups, original))
    got = be.sumsq(original)
    truth = sum(float((t.double() ** 2).sum()) for t in original)
    _sum_close(got, truth, truth, dtype, "sumsq over many tensors")


def test_tensor_longer_than_one_launch(target):
    """A tensor with more chunks than a launch holds continues in the next launch."""
    be, dev = target.backend, target.device
    if target.max_blocks is None:
        pytest.skip("launch table size unknown")
    dtype = torch.float32
    n = target.max_blocks * CHUNK + 12345
    x = _tensors([n, 5], dtype, dev, 40)
    g = _tensors([n, 5], dtype, dev, 41)
    truth = sum(float((t.double() ** 2).sum()) for t in x)
    _sum_close(be.sumsq(x), truth, truth, dtype, "sumsq of a long tensor")
    ref = _clone(x)
    scale = torch.tensor(-0.25, dtype=dtype, device=dev)
    REF.backup_ascent(ref, g, _clone(x), scale, False)
    be.backup_ascent(x, g, [], scale, False)
    _assert_lists_close(x, ref, "long tensor")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_reductions_are_deterministic(target, dtype):
    dev = target.device
    backups = _tensors(SIZES * 3, dtype, dev, 50)
    points = [b + d for b, d in zip(backups, _tensors(SIZES * 3, dtype, dev, 51, scale=0.1))]
    grads = _tensors(SIZES * 3, dtype, dev, 52)
    first = (target.backend.sumsq(grads), target.backend.final_sums(points, backups, grads))
    for _ in range(5):
        again = (target.backend.sumsq(grads), target.backend.final_sums(points, backups, grads))
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


# --------------------------------------------------------------------------- optimizer
def _train(target, backend_name, base, base_kw, xsam_kw, steps, monkeypatch):
    import xsam_fast.optimizer as opt_mod
    from xsam_fast import XSAM

    torch.manual_seed(0)
    dev = target.device
    model = torch.nn.Sequential(torch.nn.Linear(13, 33), torch.nn.Tanh(),
                                torch.nn.Linear(33, 5)).to(dev)
    x = torch.randn(64, 13, device=dev)
    y = torch.randint(0, 5, (64,), device=dev)
    opt = XSAM(model.parameters(), base, backend="reference", **xsam_kw, **base_kw)
    if backend_name == "target":
        monkeypatch.setattr(opt_mod, "get_backend", lambda name, device, dtype: target.backend)
    try:
        for _ in range(steps):
            def closure():
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                return loss
            opt.step(closure)
    finally:
        monkeypatch.undo()
    return [p.detach().double().cpu() for p in model.parameters()]


@pytest.mark.parametrize("base,base_kw,xsam_kw", [
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True),
     dict(rho=0.1, steps=2, alpha=0.7)),
    (torch.optim.AdamW, dict(lr=1e-2, weight_decay=1e-2), dict(rho=0.05, alpha=1.3)),
    (torch.optim.RMSprop, dict(lr=1e-2), dict(rho=0.05)),  # generic path: write_grad_restore
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9), dict(rho=0.3, steps=2, alpha=0.7,
                                                      adaptive=True)),
    (torch.optim.AdamW, dict(lr=1e-2), dict(rho=0.3, adaptive=True, adaptive_weights_only=False)),
], ids=["sgd-nesterov-k2", "adamw", "rmsprop-generic", "asam-sgd-k2", "asam-all-adamw"])
def test_optimizer_matches_reference(target, base, base_kw, xsam_kw, monkeypatch):
    want = _train(target, "reference", base, base_kw, xsam_kw, 4, monkeypatch)
    before = target.backend.launch_count()
    got = _train(target, "target", base, base_kw, xsam_kw, 4, monkeypatch)
    assert target.backend.launch_count() > before, "the backend under test did not run"
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=1e-5, atol=1e-6), (g - w).abs().max()
