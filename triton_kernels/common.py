"""Device-side helpers shared by the multi-tensor kernels: find the chunk, load, store.

Every multi-tensor kernel of this package runs one program per *chunk*:
``BLOCK`` consecutive elements (in memory order) of one tensor of a bucket. The
program reads its ``(tensor index, chunk index)`` pair from the work list built
on the host (:mod:`.packing`), the tensor's length from the length table, and
the tensor's address from each list's pointer table (one int64 ``data_ptr()``
per tensor). A program takes one of three paths (:func:`on_path`):

* a full chunk of tensors whose addresses in every list are multiples of
  :data:`VECTOR` bytes: loads and stores without a mask, with an alignment hint,
  so the compiler emits 128-bit vector accesses;
* a full chunk of any other tensor: no mask, no hint (element accesses);
* the last, partial chunk of a tensor: masked.

The choice is made per program at run time from the addresses themselves (the
alignment flag of a tensor is the low bits of its pointer-table entries), so one
misaligned tensor does not slow down the others of its launch.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .config import VECTOR_BYTES
from .scalars import C_D, C_G

VECTOR: tl.constexpr = tl.constexpr(VECTOR_BYTES)


@triton.jit
def locate(work, numels, BLOCK: tl.constexpr, LARGE: tl.constexpr):
    """``(t, start, n)`` of this program: tensor index, first element, tensor length.

    ``LARGE`` selects int64 offsets (a tensor of the bucket has more than
    ``2**31 - 1 - BLOCK`` elements); otherwise everything is int32.
    """
    pid = tl.program_id(0)
    t = tl.load(work + 2 * pid)
    c = tl.load(work + 2 * pid + 1)
    n = tl.load(numels + t)
    if LARGE:
        c = c.to(tl.int64)
    else:
        n = n.to(tl.int32)
    return t, c * BLOCK, n


@triton.jit
def aligned(addresses):
    """Whether the OR of some tensors' addresses (int64) is a multiple of ``VECTOR`` bytes,
    i.e. every one of them is."""
    return (addresses & (VECTOR - 1)) == 0


@triton.jit
def on_path(CHUNK: tl.constexpr, args, start, n, addresses, BLOCK: tl.constexpr):
    """``CHUNK(*args, MASKED, ALIGNED)`` on this program's path (see the module docstring).

    ``args``: a tuple of ``CHUNK``'s other arguments; ``start``, ``n``: the chunk's
    first element and the tensor's length (from :func:`locate`); ``addresses``: the
    OR of the chunk's tensor addresses (int64), for :func:`aligned`.
    """
    if start + BLOCK <= n:
        if aligned(addresses):
            CHUNK(*args, False, True)
        else:
            CHUNK(*args, False, False)
    else:
        CHUNK(*args, True, False)


#: the combine function of ``tl.sum``. Reducing with it through ``tl.reduce`` is
#: ``tl.sum`` on a GPU, and under the interpreter it takes numpy's fast path even
#: when Triton was imported before ``TRITON_INTERPRET`` was set (``tl.sum`` itself
#: is then a compiled-mode function the interpreter cannot call).
_SUM_COMBINE = tl.standard._sum_combine


@triton.jit
def block_sum(x):
    """Sum of a 1-d block (same tree as ``tl.sum``)."""
    return tl.reduce(x, 0, _SUM_COMBINE)


@triton.jit
def typed(address, DT: tl.constexpr, ALIGNED: tl.constexpr):
    """``address`` (int64) as a pointer to ``DT`` (``VECTOR``-byte aligned if ``ALIGNED``)."""
    p = address.to(tl.pointer_type(DT))
    if ALIGNED:
        p = tl.multiple_of(p, VECTOR)
    return p


@triton.jit
def load(
    address,
    offs,
    n,
    DT: tl.constexpr,
    ACC: tl.constexpr,
    MASKED: tl.constexpr,
    ALIGNED: tl.constexpr,
):
    """Elements ``offs`` of the tensor at ``address``, widened to ``ACC`` (0 past ``n``).

    bfloat16 is widened on the bits (exact, subnormals included, on the GPU and
    in the interpreter, whose own cast flushes subnormals).
    """
    if DT == tl.bfloat16:
        p = typed(address, tl.uint16, ALIGNED)
    else:
        p = typed(address, DT, ALIGNED)
    if MASKED:
        x = tl.load(p + offs, mask=offs < n, other=0)
    else:
        x = tl.load(p + offs)
    if DT == tl.bfloat16:
        x = (x.to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    return x.to(ACC)


@triton.jit
def to_bf16_rne(x):
    """float32 -> bfloat16, rounded to nearest even (NaN -> 0x7FC0, as torch does).

    Done on the bits so that the GPU and Triton's interpreter (whose own cast
    truncates and flushes subnormals) give the same result.
    """
    bits = x.to(tl.uint32, bitcast=True)
    r = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    r = tl.where(x != x, 0x7FC0, r)
    return r.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def store(address, offs, n, x, DT: tl.constexpr, MASKED: tl.constexpr, ALIGNED: tl.constexpr):
    """Store ``x`` (accumulation dtype) at ``address``, rounded to nearest even."""
    p = typed(address, DT, ALIGNED)
    if DT == tl.bfloat16:
        v = to_bf16_rne(x)
    else:
        v = x.to(DT)
    if MASKED:
        tl.store(p + offs, v, mask=offs < n)
    else:
        tl.store(p + offs, v)


@triton.jit
def div(a, b, ACC: tl.constexpr):
    """IEEE-rounded division (Triton's ``/`` on float32 is approximate on GPUs)."""
    if ACC == tl.float64:
        return a / b
    else:
        return tl.div_rn(a, b)


@triton.jit
def sqrt(x, ACC: tl.constexpr):
    """IEEE-rounded square root (``tl.sqrt`` on float32 is approximate on GPUs)."""
    if ACC == tl.float64:
        return tl.sqrt(x)
    else:
        return tl.sqrt_rn(x)


@triton.jit
def asam_t(theta0, eta_ptr, ACC: tl.constexpr):
    """ASAM's ``T = |theta_0| + eta`` (``eta`` read from a 1-element device tensor)."""
    return tl.abs(theta0) + tl.load(eta_ptr).to(ACC)


@triton.jit
def asam_q(d, tt, ACC: tl.constexpr):
    """``d / (T*T)``, and 0 where ``T*T`` is 0 (never ``0 / 0``)."""
    nonzero = tt != 0
    return tl.where(nonzero, div(d, tl.where(nonzero, tt, 1.0), ACC), 0.0)


@triton.jit
def direction(
    x_at,
    b_at,
    g_at,
    sc,
    eta,
    offs,
    n,
    DT: tl.constexpr,
    ACC: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    ADAPTIVE: tl.constexpr,
    MASKED: tl.constexpr,
    ALIGNED: tl.constexpr,
):
    """``(theta_0, G)`` of the fused updates: ``G = c_d (x - theta_0) + c_g g`` (ASAM:
    ``c_d q + c_g g``), ``c_d, c_g = sc[C_D], sc[C_G]``, negated if ``MAXIMIZE``."""
    b = load(b_at, offs, n, DT, ACC, MASKED, ALIGNED)
    d = load(x_at, offs, n, DT, ACC, MASKED, ALIGNED) - b
    g = load(g_at, offs, n, DT, ACC, MASKED, ALIGNED)
    if ADAPTIVE:
        tt = asam_t(b, eta, ACC)
        d = asam_q(d, tt * tt, ACC)
    step = tl.load(sc + C_D).to(ACC) * d + tl.load(sc + C_G).to(ACC) * g
    if MAXIMIZE:
        step = -step
    return b, step
