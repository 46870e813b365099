"""Interpolation fused with ``torch.optim.SGD``'s update, stepping from theta_0.

``G`` (:func:`.common.direction`) is formed in registers and fed to SGD's update
(momentum, dampening, Nesterov, weight decay, maximize); the operations follow the
reference backend one by one (same order, one rounding each). The coefficients and
the skip flag are read from ``sc``, the hyper-parameters from the float64 ``hyper``
(``1 - dampening`` formed in float64, then rounded to the accumulation dtype);
switches that change the code are compile-time constants. Where ``sc[FOUND_INF]``
is set, params get theta_0 back and the buffers keep their values (fresh ones: 0).
One launch per call.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from .common import direction, load, locate, on_path, store
from .packing import Packer, TritonList, same_layout
from .scalars import FOUND_INF, H_DAMPENING, H_LR, H_MOMENTUM, H_WEIGHT_DECAY


@triton.jit
def _sgd_chunk(
    p_at,
    x_at,
    b_at,
    g_at,
    buf_at,
    sc,
    hyper,
    eta,
    offs,
    n,
    DT: tl.constexpr,
    ACC: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    ADAPTIVE: tl.constexpr,
    WEIGHT_DECAY: tl.constexpr,
    MOMENTUM: tl.constexpr,
    NESTEROV: tl.constexpr,
    INIT_BUFS: tl.constexpr,
    MASKED: tl.constexpr,
    ALIGNED: tl.constexpr,
):
    found = tl.load(sc + FOUND_INF) != 0
    theta0, step = direction(
        x_at, b_at, g_at, sc, eta, offs, n, DT, ACC, MAXIMIZE, ADAPTIVE, MASKED, ALIGNED
    )
    if WEIGHT_DECAY:
        step = step + tl.load(hyper + H_WEIGHT_DECAY).to(ACC) * theta0
    if MOMENTUM:
        momentum = tl.load(hyper + H_MOMENTUM).to(ACC)
        if INIT_BUFS:
            buf = step
            kept = tl.where(found, 0.0, buf)
        else:
            old = load(buf_at, offs, n, DT, ACC, MASKED, ALIGNED)
            buf = momentum * old + (1.0 - tl.load(hyper + H_DAMPENING)).to(ACC) * step
            kept = tl.where(found, old, buf)
        store(buf_at, offs, n, kept, DT, MASKED, ALIGNED)
        if NESTEROV:
            step = step + momentum * buf
        else:
            step = buf
    new = theta0 - tl.load(hyper + H_LR).to(ACC) * step
    store(p_at, offs, n, tl.where(found, theta0, new), DT, MASKED, ALIGNED)


@triton.jit
def _sgd_kernel(
    P,
    X,
    B,
    G,
    BUF,
    sc,
    hyper,
    eta,
    numels,
    work,
    DT: tl.constexpr,
    ACC: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    ADAPTIVE: tl.constexpr,
    WEIGHT_DECAY: tl.constexpr,
    MOMENTUM: tl.constexpr,
    NESTEROV: tl.constexpr,
    INIT_BUFS: tl.constexpr,
    BLOCK: tl.constexpr,
    LARGE: tl.constexpr,
):
    t, start, n = locate(work, numels, BLOCK, LARGE)
    offs = start + tl.arange(0, BLOCK)
    p_at = tl.load(P + t)
    x_at = tl.load(X + t)
    b_at = tl.load(B + t)
    g_at = tl.load(G + t)
    buf_at = tl.load(BUF + t)
    on_path(
        _sgd_chunk,
        (
            p_at,
            x_at,
            b_at,
            g_at,
            buf_at,
            sc,
            hyper,
            eta,
            offs,
            n,
            DT,
            ACC,
            MAXIMIZE,
            ADAPTIVE,
            WEIGHT_DECAY,
            MOMENTUM,
            NESTEROV,
            INIT_BUFS,
        ),
        start,
        n,
        p_at | x_at | b_at | g_at | buf_at,
        BLOCK,
    )


def sgd_update(
    packer: Packer,
    params: TritonList,
    points: TritonList,
    backups: TritonList,
    grads: TritonList,
    bufs: TritonList | None,
    sc: Tensor,
    hyper: Tensor,
    *,
    weight_decay: bool,
    momentum: bool,
    nesterov: bool,
    maximize: bool,
    init_bufs: bool,
    eta: float | None,
) -> None:
    lay = same_layout(params, points, backups, grads, bufs if momentum else None)
    if lay.nblocks == 0:
        return
    buf_table = bufs.table if momentum else params.table  # never accessed without momentum
    packer.launch(
        _sgd_kernel,
        lay,
        (params.table, points.table, backups.table, grads.table, buf_table, sc, hyper),
        eta,
        MAXIMIZE=bool(maximize),
        WEIGHT_DECAY=bool(weight_decay),
        MOMENTUM=bool(momentum),
        NESTEROV=bool(nesterov),
        INIT_BUFS=bool(init_bufs),
    )
