"""Passes that move the parameters without an optimizer update.

* ``backup_ascent``: ``backups <- params`` (optional), ``params += scale * grads``
* ``write_point``: ``out = backups + c_d (points - backups) + c_g grads`` (a search point)
* ``write_grad_restore``: ``grads <- c_d (points - backups) + c_g grads``, ``params <- backups``

With ``eta`` (ASAM geometry, ``T = |theta_0| + eta``, ``ADAPTIVE``): the ascent
adds ``scale * (T*T * grads)``, the point is ``backups + (c_d d + c_g (T*T * grads))``
and G is ``c_d (d / (T*T)) + c_g grads`` (see ``xsam_fast/backends/base.py``).
``scale``, ``coeffs`` and ``eta`` are read from device memory. One launch per call.
"""
from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from .common import asam_t, div, load, locate, store
from .config import DTYPES, LAUNCH_OPTIONS
from .tables import Tables


@triton.jit
def _ascent_chunk(P, G, B, scale, eta, t, offs, n, DT: tl.constexpr, ACC: tl.constexpr,
                  BACKUP: tl.constexpr, ADAPTIVE: tl.constexpr, MASKED: tl.constexpr,
                  ALIGNED: tl.constexpr):
    p = load(P, t, offs, n, DT, ACC, MASKED, ALIGNED)
    g = load(G, t, offs, n, DT, ACC, MASKED, ALIGNED)
    if ADAPTIVE:  # T from theta_0: the params themselves when they are backed up now
        if BACKUP:
            tt = asam_t(p, eta, ACC)
        else:
            tt = asam_t(load(B, t, offs, n, DT, ACC, MASKED, ALIGNED), eta, ACC)
        g = (tt * tt) * g
    if BACKUP:
        store(B, t, offs, n, p, DT, MASKED, ALIGNED)
    store(P, t, offs, n, p + tl.load(scale).to(ACC) * g, DT, MASKED, ALIGNED)


@triton.jit
def _ascent_kernel(P, G, B, scale, eta, numels, work, DT: tl.constexpr, ACC: tl.constexpr,
                   BACKUP: tl.constexpr, ADAPTIVE: tl.constexpr, BLOCK: tl.constexpr,
                   LARGE: tl.constexpr, ALIGNED: tl.constexpr):
    t, start, n = locate(work, numels, BLOCK, LARGE)
    offs = start + tl.arange(0, BLOCK)
    if start + BLOCK <= n:
        _ascent_chunk(P, G, B, scale, eta, t, offs, n, DT, ACC, BACKUP, ADAPTIVE, False, ALIGNED)
    else:
        _ascent_chunk(P, G, B, scale, eta, t, offs, n, DT, ACC, BACKUP, ADAPTIVE, True, ALIGNED)


@triton.jit
def _interp_chunk(OUT, X, B, G, coeffs, eta, t, offs, n, DT: tl.constexpr, ACC: tl.constexpr,
                  RESTORE: tl.constexpr, ADAPTIVE: tl.constexpr, MASKED: tl.constexpr,
                  ALIGNED: tl.constexpr):
    b = load(B, t, offs, n, DT, ACC, MASKED, ALIGNED)
    d = load(X, t, offs, n, DT, ACC, MASKED, ALIGNED) - b
    g = load(G, t, offs, n, DT, ACC, MASKED, ALIGNED)
    if ADAPTIVE:
        tt = asam_t(b, eta, ACC)
        if RESTORE:  # G = c_d d / T^2 + c_g g
            d = div(d, tt * tt, ACC)
        else:  # point = theta_0 + (c_d d + c_g T^2 g)
            g = (tt * tt) * g
    direction = tl.load(coeffs).to(ACC) * d + tl.load(coeffs + 1).to(ACC) * g
    if RESTORE:  # G into grads, theta_0 into params
        store(G, t, offs, n, direction, DT, MASKED, ALIGNED)
        store(OUT, t, offs, n, b, DT, MASKED, ALIGNED)
    else:  # the point theta_0 + direction into out
        store(OUT, t, offs, n, b + direction, DT, MASKED, ALIGNED)


@triton.jit
def _interp_kernel(OUT, X, B, G, coeffs, eta, numels, work, DT: tl.constexpr, ACC: tl.constexpr,
                   RESTORE: tl.constexpr, ADAPTIVE: tl.constexpr, BLOCK: tl.constexpr,
                   LARGE: tl.constexpr, ALIGNED: tl.constexpr):
    t, start, n = locate(work, numels, BLOCK, LARGE)
    offs = start + tl.arange(0, BLOCK)
    if start + BLOCK <= n:
        _interp_chunk(OUT, X, B, G, coeffs, eta, t, offs, n, DT, ACC, RESTORE, ADAPTIVE, False,
                      ALIGNED)
    else:
        _interp_chunk(OUT, X, B, G, coeffs, eta, t, offs, n, DT, ACC, RESTORE, ADAPTIVE, True,
                      ALIGNED)


def eta_tensor(tables: Tables, eta: float | None, like: Tensor) -> Tensor:
    """``eta`` as a 1-element tensor in the accumulation dtype of ``like``'s bucket (a
    placeholder, never read, when ``eta`` is None)."""
    acc = torch.float64 if like.dtype == torch.float64 else torch.float32
    return tables.scalars((0.0 if eta is None else eta,), acc, like.device)


def backup_ascent(tables: Tables, params: Sequence[Tensor], grads: Sequence[Tensor],
                  backups: Sequence[Tensor], scale: Tensor, backup: bool,
                  eta: float | None = None) -> None:
    lay = tables.layout(params)
    if lay.nblocks == 0:
        return
    # the backups are written when backing up, and read for T when adaptive without backup
    lists = (params, grads, backups) if backup or eta is not None else (params, grads)
    ptrs = [tables.pointers(ts) for ts in lists]
    b_table = ptrs[2].table if len(ptrs) == 3 else ptrs[0].table  # else unused
    dt, acc = DTYPES[params[0].dtype]
    _ascent_kernel[(lay.nblocks,)](ptrs[0].table, ptrs[1].table, b_table, scale,
                                   eta_tensor(tables, eta, params[0]), lay.numels,
                                   lay.work, DT=dt, ACC=acc, BACKUP=bool(backup),
                                   ADAPTIVE=eta is not None, BLOCK=tables.block, LARGE=lay.large,
                                   ALIGNED=all(p.aligned for p in ptrs), **LAUNCH_OPTIONS)


def _interpolate(tables: Tables, out: Sequence[Tensor], points: Sequence[Tensor],
                 backups: Sequence[Tensor], grads: Sequence[Tensor], coeffs: Tensor,
                 restore: bool, eta: float | None) -> None:
    lay = tables.layout(out)
    if lay.nblocks == 0:
        return
    ptrs = [tables.pointers(ts) for ts in (out, points, backups, grads)]
    dt, acc = DTYPES[out[0].dtype]
    _interp_kernel[(lay.nblocks,)](*(p.table for p in ptrs), coeffs,
                                   eta_tensor(tables, eta, out[0]), lay.numels, lay.work,
                                   DT=dt, ACC=acc, RESTORE=restore, ADAPTIVE=eta is not None,
                                   BLOCK=tables.block,
                                   LARGE=lay.large, ALIGNED=all(p.aligned for p in ptrs),
                                   **LAUNCH_OPTIONS)


def write_point(tables: Tables, out: Sequence[Tensor], points: Sequence[Tensor],
                backups: Sequence[Tensor], grads: Sequence[Tensor], coeffs: Tensor,
                eta: float | None = None) -> None:
    _interpolate(tables, out, points, backups, grads, coeffs, restore=False, eta=eta)


def write_grad_restore(tables: Tables, params: Sequence[Tensor], points: Sequence[Tensor],
                       backups: Sequence[Tensor], grads: Sequence[Tensor],
                       coeffs: Tensor, eta: float | None = None) -> None:
    _interpolate(tables, params, points, backups, grads, coeffs, restore=True, eta=eta)
