"""Passes that move the parameters without an optimizer update.

* ``backup_ascent``: ``backups <- params`` (optional), ``params += scale * grads``
* ``write_point``: ``out = backups + (c_d (points - backups) + c_g grads)`` (a search point)
* ``write_grad_restore``: ``grads <- c_d (points - backups) + c_g grads``, ``params <- backups``

With ``eta`` (ASAM geometry, ``T = |theta_0| + eta``, ``ADAPTIVE``): the ascent
adds ``scale * (T*T * grads)``, the point is ``backups + (c_d d + c_g (T*T * grads))``
and G is ``c_d q + c_g grads``, ``q = d / (T*T)`` or 0 where ``T*T`` is 0 (see
``xsam_fast/backends/base.py``). The ascent scale is derived per program from
``sc`` and ``hyper`` in float64 (:func:`.scalars.ascent_scale`), the coefficients and
``eta`` are read from device memory. One launch per call.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from .common import asam_q, asam_t, load, locate, on_path, store
from .packing import Packer, TritonList, same_layout
from .scalars import ascent_scale


@triton.jit
def _ascent_chunk(
    p_at,
    g_at,
    b_at,
    scale,
    eta,
    offs,
    n,
    DT: tl.constexpr,
    ACC: tl.constexpr,
    BACKUP: tl.constexpr,
    ADAPTIVE: tl.constexpr,
    MASKED: tl.constexpr,
    ALIGNED: tl.constexpr,
):
    p = load(p_at, offs, n, DT, ACC, MASKED, ALIGNED)
    g = load(g_at, offs, n, DT, ACC, MASKED, ALIGNED)
    if ADAPTIVE:  # T from theta_0: the params themselves when they are backed up now
        if BACKUP:
            tt = asam_t(p, eta, ACC)
        else:
            tt = asam_t(load(b_at, offs, n, DT, ACC, MASKED, ALIGNED), eta, ACC)
        g = (tt * tt) * g
    if BACKUP:
        store(b_at, offs, n, p, DT, MASKED, ALIGNED)
    store(p_at, offs, n, p + scale * g, DT, MASKED, ALIGNED)


@triton.jit
def _ascent_kernel(
    P,
    G,
    B,
    sc,
    hyper,
    eta,
    numels,
    work,
    DT: tl.constexpr,
    ACC: tl.constexpr,
    BACKUP: tl.constexpr,
    ADAPTIVE: tl.constexpr,
    BLOCK: tl.constexpr,
    LARGE: tl.constexpr,
):
    t, start, n = locate(work, numels, BLOCK, LARGE)
    offs = start + tl.arange(0, BLOCK)
    scale = ascent_scale(sc, hyper).to(ACC)
    p_at = tl.load(P + t)
    g_at = tl.load(G + t)
    b_at = tl.load(B + t)
    if BACKUP or ADAPTIVE:  # the backups are accessed
        addresses = p_at | g_at | b_at
    else:
        addresses = p_at | g_at
    on_path(
        _ascent_chunk,
        (p_at, g_at, b_at, scale, eta, offs, n, DT, ACC, BACKUP, ADAPTIVE),
        start,
        n,
        addresses,
        BLOCK,
    )


@triton.jit
def _interp_chunk(
    out_at,
    x_at,
    b_at,
    g_at,
    c_d,
    c_g,
    eta,
    offs,
    n,
    DT: tl.constexpr,
    ACC: tl.constexpr,
    RESTORE: tl.constexpr,
    ADAPTIVE: tl.constexpr,
    MASKED: tl.constexpr,
    ALIGNED: tl.constexpr,
):
    b = load(b_at, offs, n, DT, ACC, MASKED, ALIGNED)
    d = load(x_at, offs, n, DT, ACC, MASKED, ALIGNED) - b
    g = load(g_at, offs, n, DT, ACC, MASKED, ALIGNED)
    if ADAPTIVE:
        tt = asam_t(b, eta, ACC)
        tt = tt * tt
        if RESTORE:  # G = c_d q + c_g g
            d = asam_q(d, tt, ACC)
        else:  # point = theta_0 + (c_d d + c_g T^2 g)
            g = tt * g
    direction = c_d * d + c_g * g
    if RESTORE:  # G into grads, theta_0 into params
        store(g_at, offs, n, direction, DT, MASKED, ALIGNED)
        store(out_at, offs, n, b, DT, MASKED, ALIGNED)
    else:  # the point theta_0 + direction into out
        store(out_at, offs, n, b + direction, DT, MASKED, ALIGNED)


@triton.jit
def _interp_kernel(
    OUT,
    X,
    B,
    G,
    coeffs,
    eta,
    numels,
    work,
    DT: tl.constexpr,
    ACC: tl.constexpr,
    RESTORE: tl.constexpr,
    ADAPTIVE: tl.constexpr,
    BLOCK: tl.constexpr,
    LARGE: tl.constexpr,
):
    t, start, n = locate(work, numels, BLOCK, LARGE)
    offs = start + tl.arange(0, BLOCK)
    c_d = tl.load(coeffs).to(ACC)
    c_g = tl.load(coeffs + 1).to(ACC)
    out_at = tl.load(OUT + t)
    x_at = tl.load(X + t)
    b_at = tl.load(B + t)
    g_at = tl.load(G + t)
    on_path(
        _interp_chunk,
        (out_at, x_at, b_at, g_at, c_d, c_g, eta, offs, n, DT, ACC, RESTORE, ADAPTIVE),
        start,
        n,
        out_at | x_at | b_at | g_at,
        BLOCK,
    )


def backup_ascent(
    packer: Packer,
    params: TritonList,
    grads: TritonList,
    backups: TritonList,
    sc: Tensor,
    hyper: Tensor,
    backup: bool,
    eta: float | None,
) -> None:
    lay = same_layout(params, grads, backups)
    if lay.nblocks == 0:
        return
    packer.launch(
        _ascent_kernel,
        lay,
        (params.table, grads.table, backups.table, sc, hyper),
        eta,
        BACKUP=bool(backup),
    )


def interpolate(
    packer: Packer,
    out: TritonList,
    points: TritonList,
    backups: TritonList,
    grads: TritonList,
    coeffs: Tensor,
    restore: bool,
    eta: float | None,
) -> None:
    """``write_point`` (``out`` = the point) or, ``restore``, ``write_grad_restore``
    (``out`` = the params)."""
    lay = same_layout(out, points, backups, grads)
    if lay.nblocks == 0:
        return
    packer.launch(
        _interp_kernel,
        lay,
        (out.table, points.table, backups.table, grads.table, coeffs),
        eta,
        RESTORE=bool(restore),
    )
