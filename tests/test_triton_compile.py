"""Every Triton kernel compiles to a CUDA binary (cubin) for sm_90 and sm_80, without a GPU.

The interpreter tests (``test_triton_backend.py``) check what the kernels compute,
but the interpreter runs them as numpy and never sees Triton's GPU compiler.
``triton.compile`` with an explicit ``GPUTarget`` runs the whole pipeline
(TTIR, TTGIR, LLVM IR, PTX, and ptxas, which ships with Triton) on this machine:
a kernel that the compiler rejects, or that needs shared memory beyond the
target's, fails here. Each kernel is compiled for every parameter dtype with its
switches all off and all on (int64 offsets included), with the launch options of
the backend (warps, no fp fusion). The PTX is checked for what the tests on CPU
cannot see: 128-bit accesses on the aligned path, no fma contraction, IEEE float64
scalar math.
"""

from __future__ import annotations

import pytest

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

import torch  # noqa: E402
import triton_modules  # noqa: E402

#: kernel -> (module, types of the non-constexpr arguments; "acc" is the accumulation
#: dtype's pointer, "*fp64" the device scalars and hyper-parameters, tables and lengths
#: are int64 pointers, the work list int32)
KERNELS = {
    "_sumsq_kernel": (
        "reductions",
        dict(X="*i64", W="*i64", eta="acc", numels="*i64", work="*i32", partials="acc"),
    ),
    "_final_kernel": (
        "reductions",
        dict(
            P="*i64",
            B="*i64",
            G="*i64",
            eta="acc",
            numels="*i64",
            work="*i32",
            partials="acc",
            nblocks="i32",
        ),
    ),
    "_finish_kernel": ("reductions", dict(partials="acc", out="*fp64", nblocks="i32")),
    "_ascent_kernel": (
        "perturb",
        dict(
            P="*i64",
            G="*i64",
            B="*i64",
            sc="*fp64",
            hyper="*fp64",
            eta="acc",
            numels="*i64",
            work="*i32",
        ),
    ),
    "_interp_kernel": (
        "perturb",
        dict(
            OUT="*i64",
            X="*i64",
            B="*i64",
            G="*i64",
            coeffs="*fp64",
            eta="acc",
            numels="*i64",
            work="*i32",
        ),
    ),
    "_sgd_kernel": (
        "sgd",
        dict(
            P="*i64",
            X="*i64",
            B="*i64",
            G="*i64",
            BUF="*i64",
            sc="*fp64",
            hyper="*fp64",
            eta="acc",
            numels="*i64",
            work="*i32",
        ),
    ),
    "_adam_kernel": (
        "adam",
        dict(
            P="*i64",
            X="*i64",
            B="*i64",
            G="*i64",
            M="*i64",
            V="*i64",
            steps="*fp32",
            sc="*fp64",
            hyper="*fp64",
            eta="acc",
            numels="*i64",
            work="*i32",
        ),
    ),
    "_ascent_scalars_kernel": ("scalars", dict(sc="*fp64")),
    "_plain_scalars_kernel": ("scalars", dict(sc="*fp64")),
    "_update_scalars_kernel": ("scalars", dict(sc="*fp64")),
}
#: kernels without an element dtype: compiled for their accumulation dtypes only
#: (_finish_kernel) or once (the float64 scalar kernels)
NO_ELEMENT_DTYPE = {
    "_finish_kernel": (torch.float32, torch.float64),
    "_ascent_scalars_kernel": (torch.float64,),
    "_plain_scalars_kernel": (torch.float64,),
    "_update_scalars_kernel": (torch.float64,),
}
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
DTYPE_IDS = {
    torch.float64: "fp64",
    torch.float32: "fp32",
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
}
_ACC_NAMES = {tl.float32: "*fp32", tl.float64: "*fp64"}


@pytest.fixture(scope="module")
def kernels():
    """The kernel modules built as ``JITFunction`` s (not for the interpreter)."""
    if triton_modules.interpreted():
        triton_modules.reload(interpret=False)
    yield {name: triton_modules.kernel_module(name) for name in triton_modules.KERNEL_MODULES}
    triton_modules.restore()


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
    options = dict(config.SCALAR_OPTIONS if module == "scalars" else config.LAUNCH_OPTIONS)
    return triton.compile(
        ASTSource(fn=fn, signature=signature, constexprs=constexprs),
        target=GPUTarget("cuda", arch, 32),
        options=options,
    )


def _sm90_cases():
    """(kernel, dtype, switches)."""
    for name in KERNELS:
        for dtype in NO_ELEMENT_DTYPE.get(name, DTYPES):
            for switches in (False, True):
                yield pytest.param(
                    name,
                    dtype,
                    switches,
                    id=f"{name}-{DTYPE_IDS[dtype]}-switches-{'on' if switches else 'off'}",
                )


@pytest.mark.parametrize("name,dtype,switches", list(_sm90_cases()))
def test_kernel_compiles_for_sm90(kernels, name, dtype, switches):
    compiled = _compile(kernels, name, dtype, switches, 90)
    assert compiled.asm["cubin"], "ptxas produced no binary"
    assert ".target sm_90" in compiled.asm["ptx"]
    options = (
        kernels["config"].SCALAR_OPTIONS
        if KERNELS[name][0] == "scalars"
        else kernels["config"].LAUNCH_OPTIONS
    )
    assert compiled.metadata.num_warps == options["num_warps"]


@pytest.mark.parametrize("name", list(KERNELS))
def test_kernel_compiles_for_sm80_bf16(kernels, name):
    dtype = NO_ELEMENT_DTYPE.get(name, (torch.bfloat16,))[0]
    compiled = _compile(kernels, name, dtype, True, 80)
    assert compiled.asm["cubin"] and ".target sm_80" in compiled.asm["ptx"]


def test_no_fp_fusion_in_the_ptx(kernels):
    """The launch options turn fma contraction off: the ascent's ``p + s * g`` stays a
    separate multiply and add (one rounding each, as in the reference backend)."""
    ptx = _compile(kernels, "_ascent_kernel", torch.float32, False, 90).asm["ptx"]
    assert "fma.rn.f32" not in ptx and "mul.rn.f32" in ptx and "add.rn.f32" in ptx


#: 128-bit global accesses by element dtype (fp16 and bf16 move as packed b32 words)
VECTOR_LOAD = {
    torch.float32: "ld.global.v4.b32",
    torch.bfloat16: "ld.global.v4.b32",
    torch.float16: "ld.global.v4.b32",
    torch.float64: "ld.global.v2.b64",
}
VECTOR_STORE = {dtype: op.replace("ld.", "st.") for dtype, op in VECTOR_LOAD.items()}
#: PTX of one scalar (element) global load
SCALAR_LOAD = {
    torch.float32: "ld.global.b32",
    torch.bfloat16: "ld.global.b16",
    torch.float16: "ld.global.b16",
    torch.float64: "ld.global.b64",
}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize(
    "name",
    [
        "_sumsq_kernel",
        "_final_kernel",
        "_ascent_kernel",
        "_interp_kernel",
        "_sgd_kernel",
        "_adam_kernel",
    ],
)
def test_aligned_path_is_vectorised(kernels, name, dtype):
    """The hinted path of a multi-tensor kernel (full chunks of 16-byte aligned tensors)
    moves 128 bits per access; the same launch keeps element accesses for the others."""
    ptx = _compile(kernels, name, dtype, False, 90).asm["ptx"]
    assert VECTOR_LOAD[dtype] in ptx, f"no {VECTOR_LOAD[dtype]} in {name}"
    assert SCALAR_LOAD[dtype] in ptx, f"no element loads ({SCALAR_LOAD[dtype]}) in {name}"
    if name not in ("_sumsq_kernel", "_final_kernel"):
        assert VECTOR_STORE[dtype] in ptx, f"no {VECTOR_STORE[dtype]} in {name}"


def test_float64_scalar_math_is_ieee(kernels):
    """The step's scalars and Adam's bias corrections are computed in float64 with
    IEEE-rounded division and square root and libdevice's exp2/log2 (inlined), no
    approximate instruction; the one exception is the ``rcp.approx.ftz.f64`` seed that
    libdevice's log2 refines (one per log2: beta1 and beta2)."""
    ptx = _compile(kernels, "_update_scalars_kernel", torch.float64, True, 90).asm["ptx"]
    assert "div.rn.f64" in ptx and "sqrt.rn.f64" in ptx
    assert ".approx" not in ptx
    for dtype in (torch.float32, torch.float64):
        ptx = _compile(kernels, "_adam_kernel", dtype, True, 90).asm["ptx"]
        assert "div.rn.f64" in ptx and "sqrt.rn.f64" in ptx, DTYPE_IDS[dtype]
        approx = [line.split()[0] for line in ptx.splitlines() if ".approx" in line]
        assert approx == ["rcp.approx.ftz.f64"] * 2, (DTYPE_IDS[dtype], approx)
