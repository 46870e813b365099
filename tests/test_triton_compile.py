"""Every Triton kernel compiles to a CUDA binary (cubin) for sm_90 and sm_80, without a GPU.

The interpreter tests (``test_triton_backend.py``) check what the kernels compute,
but the interpreter runs them as numpy and never sees Triton's GPU compiler.
``triton.compile`` with an explicit ``GPUTarget`` runs the whole pipeline
(TTIR, TTGIR, LLVM IR, PTX, and ptxas, which ships with Triton) on this machine:
a kernel that the compiler rejects, or that needs shared memory beyond the
target's, fails here. Each kernel is compiled for every parameter dtype with its
switches all off and all on (with int64 offsets and alignment hints), with the
launch options of the backend (warps, no fp fusion).
"""
from __future__ import annotations

import importlib
import os

import pytest

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

import torch  # noqa: E402

KERNEL_MODULES = ["config", "common", "tables", "reductions", "perturb", "update"]

#: kernel -> (module, types of the non-constexpr arguments; "acc" is the accumulation
#: dtype's pointer, tables and lengths are int64 pointers, the work list int32)
KERNELS = {
    "_sumsq_kernel": ("reductions", dict(X="*i64", W="*i64", eta="acc", numels="*i64",
                                         work="*i32", partials="acc")),
    "_final_kernel": ("reductions", dict(P="*i64", B="*i64", G="*i64", eta="acc",
                                         numels="*i64", work="*i32", partials="acc",
                                         nblocks="i32")),
    "_finish_kernel": ("reductions", dict(partials="acc", out="acc", nblocks="i32")),
    "_ascent_kernel": ("perturb", dict(P="*i64", G="*i64", B="*i64", scale="acc", eta="acc",
                                       numels="*i64", work="*i32")),
    "_interp_kernel": ("perturb", dict(OUT="*i64", X="*i64", B="*i64", G="*i64", coeffs="acc",
                                       eta="acc", numels="*i64", work="*i32")),
    "_sgd_kernel": ("update", dict(P="*i64", X="*i64", B="*i64", G="*i64", BUF="*i64",
                                   coeffs="acc", hyper="acc", eta="acc", numels="*i64",
                                   work="*i32")),
    "_adam_kernel": ("update", dict(P="*i64", X="*i64", B="*i64", G="*i64", M="*i64", V="*i64",
                                    coeffs="acc", hyper="acc", eta="acc", numels="*i64",
                                    work="*i32")),
}
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
_ACC_NAMES = {tl.float32: "*fp32", tl.float64: "*fp64"}


@pytest.fixture(scope="module")
def kernels():
    """The kernel modules built as ``JITFunction`` s (not for the interpreter)."""
    mp = pytest.MonkeyPatch()
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if interpreted:
        mp.delenv("TRITON_INTERPRET")
    modules = {name: importlib.reload(importlib.import_module(f"xsam_fast.triton_kernels.{name}"))
               for name in KERNEL_MODULES}
    yield modules
    mp.undo()
    if interpreted:
        for name in KERNEL_MODULES:
            importlib.reload(importlib.import_module(f"xsam_fast.triton_kernels.{name}"))


def _compile(kernels, name: str, dtype: torch.dtype, switches: bool, arch: int):
    module, types = KERNELS[name]
    fn = getattr(kernels[module], name)
    assert isinstance(fn, JITFunction), f"{name} was built for the interpreter"
    config = kernels["config"]
    dt, acc = config.DTYPES[dtype]
    signature = {arg: (_ACC_NAMES[acc] if t == "acc" else t) for arg, t in types.items()}
    constexprs = {}
    for param in fn.params:
        if not param.is_constexpr:
            continue
        arg = param.name
        signature[arg] = "constexpr"
        if arg == "DT":
            constexprs[arg] = dt
        elif arg == "ACC":
            constexprs[arg] = acc
        elif arg == "BLOCK":
            constexprs[arg] = config.DEFAULT_BLOCK
        elif arg == "RBLOCK":
            constexprs[arg] = config.REDUCE_BLOCK
        else:  # a switch: ADAPTIVE, MOMENTUM, LARGE, ALIGNED, ...
            constexprs[arg] = switches
    assert set(signature) == set(fn.arg_names), f"{name}: signature out of date"
    options = {k: v for k, v in config.LAUNCH_OPTIONS.items()}
    return triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                          target=GPUTarget("cuda", arch, 32), options=options)


def _sm90_cases():
    """(kernel, dtype, switches); _finish_kernel has neither an element dtype nor
    switches, so it is compiled for its two accumulation dtypes only."""
    for name in KERNELS:
        for dtype in DTYPES:
            for switches in (False, True):
                if name == "_finish_kernel" and (dtype in (torch.bfloat16, torch.float16)
                                                 or switches):
                    continue
                yield pytest.param(name, dtype, switches, id=f"{name}-{str(dtype)[6:]}-"
                                   f"switches-{'on' if switches else 'off'}")


@pytest.mark.parametrize("name,dtype,switches", list(_sm90_cases()))
def test_kernel_compiles_for_sm90(kernels, name, dtype, switches):
    compiled = _compile(kernels, name, dtype, switches, 90)
    assert compiled.asm["cubin"], "ptxas produced no binary"
    assert ".target sm_90" in compiled.asm["ptx"]
    assert compiled.metadata.num_warps == kernels["config"].NUM_WARPS


@pytest.mark.parametrize("name", list(KERNELS))
def test_kernel_compiles_for_sm80_bf16(kernels, name):
    compiled = _compile(kernels, name, torch.bfloat16, True, 80)
    assert compiled.asm["cubin"] and ".target sm_80" in compiled.asm["ptx"]


def test_no_fp_fusion_in_the_ptx(kernels):
    """The launch options turn fma contraction off: the ascent's ``p + s * g`` stays a
    separate multiply and add (one rounding each, as in the reference backend)."""
    ptx = _compile(kernels, "_ascent_kernel", torch.float32, False, 90).asm["ptx"]
    assert "fma.rn.f32" not in ptx and "mul.rn.f32" in ptx and "add.rn.f32" in ptx
