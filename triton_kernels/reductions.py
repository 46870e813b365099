"""Deterministic multi-tensor reductions: ``sum ||x||^2`` and the final sums.

Two stages, no atomics: each program writes the partial sums of its chunk into
its own slot (accumulation dtype), then one small kernel adds the slots of each
sum in a fixed order, converts the total to float64 once and writes it into (or,
``accumulate``, adds it to) the float64 ``out`` on the device (a view of the
step's scalar vector). The same inputs and block size give bit-identical results.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..coefficients import accumulation_dtype
from .common import asam_t, block_sum, div, load, locate, on_path
from .config import DTYPES, LAUNCH_OPTIONS, REDUCE_BLOCK
from .packing import Packer, TritonList, same_layout


@triton.jit
def _sumsq_chunk(
    x_at,
    w_at,
    eta,
    offs,
    n,
    partials,
    DT: tl.constexpr,
    ACC: tl.constexpr,
    ADAPTIVE: tl.constexpr,
    MASKED: tl.constexpr,
    ALIGNED: tl.constexpr,
):
    x = load(x_at, offs, n, DT, ACC, MASKED, ALIGNED)
    if ADAPTIVE:  # ||T g||^2, T from theta_0 in W
        x = asam_t(load(w_at, offs, n, DT, ACC, MASKED, ALIGNED), eta, ACC) * x
    tl.store(partials + tl.program_id(0), block_sum(x * x))


@triton.jit
def _sumsq_kernel(
    X,
    W,
    eta,
    numels,
    work,
    partials,
    DT: tl.constexpr,
    ACC: tl.constexpr,
    ADAPTIVE: tl.constexpr,
    BLOCK: tl.constexpr,
    LARGE: tl.constexpr,
):
    t, start, n = locate(work, numels, BLOCK, LARGE)
    offs = start + tl.arange(0, BLOCK)
    x_at = tl.load(X + t)
    w_at = tl.load(W + t)
    on_path(
        _sumsq_chunk,
        (x_at, w_at, eta, offs, n, partials, DT, ACC, ADAPTIVE),
        start,
        n,
        x_at | w_at,
        BLOCK,
    )


@triton.jit
def _final_chunk(
    p_at,
    b_at,
    g_at,
    eta,
    offs,
    n,
    partials,
    nblocks,
    DT: tl.constexpr,
    ACC: tl.constexpr,
    ADAPTIVE: tl.constexpr,
    MASKED: tl.constexpr,
    ALIGNED: tl.constexpr,
):
    pid = tl.program_id(0)
    b = load(b_at, offs, n, DT, ACC, MASKED, ALIGNED)
    d = load(p_at, offs, n, DT, ACC, MASKED, ALIGNED) - b
    g = load(g_at, offs, n, DT, ACC, MASKED, ALIGNED)
    if ADAPTIVE:  # [||T g||^2, ||d / T||^2, <d, g>]
        tt = asam_t(b, eta, ACC)
        gu = tt * g
        du = div(d, tt, ACC)
    else:
        gu = g
        du = d
    tl.store(partials + pid, block_sum(gu * gu))
    tl.store(partials + nblocks + pid, block_sum(du * du))
    tl.store(partials + 2 * nblocks + pid, block_sum(d * g))


@triton.jit
def _final_kernel(
    P,
    B,
    G,
    eta,
    numels,
    work,
    partials,
    nblocks,
    DT: tl.constexpr,
    ACC: tl.constexpr,
    ADAPTIVE: tl.constexpr,
    BLOCK: tl.constexpr,
    LARGE: tl.constexpr,
):
    t, start, n = locate(work, numels, BLOCK, LARGE)
    offs = start + tl.arange(0, BLOCK)
    p_at = tl.load(P + t)
    b_at = tl.load(B + t)
    g_at = tl.load(G + t)
    on_path(
        _final_chunk,
        (p_at, b_at, g_at, eta, offs, n, partials, nblocks, DT, ACC, ADAPTIVE),
        start,
        n,
        p_at | b_at | g_at,
        BLOCK,
    )


@triton.jit
def _finish_kernel(
    partials, out, nblocks, ACC: tl.constexpr, RBLOCK: tl.constexpr, ACCUMULATE: tl.constexpr
):
    """``out[k] (+)= float64(sum(partials[k * nblocks : (k + 1) * nblocks]))``, in a fixed
    order (program ``k``)."""
    k = tl.program_id(0)
    acc = tl.full([RBLOCK], 0, ACC)  # tl.zeros is a library function: see common.block_sum
    for s in range(0, nblocks, RBLOCK):
        offs = s + tl.arange(0, RBLOCK)
        acc += tl.load(partials + k * nblocks + offs, mask=offs < nblocks, other=0.0)
    total = block_sum(acc).to(tl.float64)
    if ACCUMULATE:
        total = tl.load(out + k) + total
    tl.store(out + k, total)


def _check_out(out: Tensor, nsums: int, device: torch.device | None) -> None:
    if (
        out.dtype != torch.float64
        or out.shape != (nsums,)
        or not out.is_contiguous()
        or (device is not None and out.device != device)
    ):
        raise ValueError(
            f"out must be a contiguous float64 tensor of shape ({nsums},) on "
            f"{device}, got a {out.dtype} tensor of shape {tuple(out.shape)} on "
            f"{out.device}"
        )


def _finish(partials: Tensor, out: Tensor, nblocks: int, accumulate: bool) -> None:
    _finish_kernel[(out.numel(),)](
        partials,
        out,
        nblocks,
        ACC=DTYPES[partials.dtype][1],
        RBLOCK=REDUCE_BLOCK,
        ACCUMULATE=bool(accumulate),
        **LAUNCH_OPTIONS,
    )


def _nothing(out: Tensor, accumulate: bool) -> None:
    """The sum of no elements: 0 into ``out`` (unchanged with ``accumulate``)."""
    if not accumulate:
        out.zero_()


def sumsq(
    packer: Packer,
    grads: TritonList,
    out: Tensor,
    accumulate: bool,
    weights: TritonList | None,
    eta: float | None,
) -> None:
    """``out[0] (+)= sum_i ||grads[i]||^2`` (with ``eta``: ``||(|weights[i]| + eta)
    grads[i]||^2``); two launches."""
    lay = same_layout(grads, weights if eta is not None else None)
    _check_out(out, 1, lay.device)
    if lay.nblocks == 0:
        return _nothing(out, accumulate)
    w = weights if eta is not None else grads
    partials = torch.empty(lay.nblocks, dtype=accumulation_dtype(lay.dtype), device=lay.device)
    packer.launch(_sumsq_kernel, lay, (grads.table, w.table), eta, (partials,))
    _finish(partials, out, lay.nblocks, accumulate)


def final_sums(
    packer: Packer,
    points: TritonList,
    backups: TritonList,
    grads: TritonList,
    out: Tensor,
    accumulate: bool,
    eta: float | None,
) -> None:
    """``out[0:3] (+)= [||g||^2, ||d||^2, <d, g>]``, ``d = points - backups`` (with ``eta``:
    ``[||T g||^2, ||d / T||^2, <d, g>]``, ``T = |backups| + eta``); two launches."""
    lay = same_layout(points, backups, grads)
    _check_out(out, 3, lay.device)
    if lay.nblocks == 0:
        return _nothing(out, accumulate)
    partials = torch.empty(3 * lay.nblocks, dtype=accumulation_dtype(lay.dtype), device=lay.device)
    packer.launch(
        _final_kernel, lay, (points.table, backups.table, grads.table), eta, (partials, lay.nblocks)
    )
    _finish(partials, out, lay.nblocks, accumulate)
