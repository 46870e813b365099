"""Interpolation fused with the base optimizer's update, stepping from theta_0.

``G = c_d (points - backups) + c_g grads`` (ASAM: ``c_d q + c_g grads``) is formed in
registers and fed to ``torch.optim.SGD`` (momentum, dampening, Nesterov, weight
decay, maximize) or ``torch.optim.Adam``/``AdamW`` (amsgrad off); the operations
follow the reference backend one by one (same order, one rounding each).
Everything a step may change is read from device memory: the coefficients and
the skip flag from ``sc``, the hyper-parameters from the float64 ``hyper``
(derived factors such as ``1 - dampening`` formed in float64, then rounded to the
accumulation dtype), Adam's per-tensor step from ``steps``. Switches that change
the code (momentum on/off, Nesterov, ...) are compile-time constants. Where
``sc[FOUND_INF]`` is set, params get theta_0 back and the state keeps its values
(fresh momentum buffers: 0). One launch per call.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from ..coefficients import accumulation_dtype
from .common import aligned, asam_q, asam_t, div, load, locate, sqrt, store
from .config import DTYPES, LAUNCH_OPTIONS
from .packing import Packer, TritonList, same_layout
from .scalars import (
    C_D,
    C_G,
    FOUND_INF,
    H_ADAM_EPS,
    H_BETA1,
    H_BETA2,
    H_DAMPENING,
    H_LR,
    H_MOMENTUM,
    H_WEIGHT_DECAY,
    adam_bias_corrections,
)


@triton.jit
def _direction(
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
    """``(theta_0, G)``, G negated if ``MAXIMIZE``."""
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
    theta0, step = _direction(
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
    if start + BLOCK <= n:
        if aligned(p_at | x_at | b_at | g_at | buf_at):
            _sgd_chunk(
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
                False,
                True,
            )
        else:
            _sgd_chunk(
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
                False,
                False,
            )
    else:
        _sgd_chunk(
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
            True,
            False,
        )


@triton.jit
def _adam_chunk(
    p_at,
    x_at,
    b_at,
    g_at,
    m_at,
    v_at,
    sc,
    hyper,
    step_size,
    bc2_sqrt,
    eta,
    offs,
    n,
    DT: tl.constexpr,
    ACC: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    ADAPTIVE: tl.constexpr,
    WEIGHT_DECAY: tl.constexpr,
    DECOUPLED: tl.constexpr,
    MASKED: tl.constexpr,
    ALIGNED: tl.constexpr,
):
    found = tl.load(sc + FOUND_INF) != 0
    theta0, step = _direction(
        x_at, b_at, g_at, sc, eta, offs, n, DT, ACC, MAXIMIZE, ADAPTIVE, MASKED, ALIGNED
    )
    theta = theta0
    if WEIGHT_DECAY:
        wd = tl.load(hyper + H_WEIGHT_DECAY)
        if DECOUPLED:
            theta = theta * (1.0 - tl.load(hyper + H_LR) * wd).to(ACC)
        else:
            step = step + wd.to(ACC) * theta
    # m = lerp(m, G, 1 - beta1), with torch's two formulas for small and large weights
    beta1 = tl.load(hyper + H_BETA1)
    beta2 = tl.load(hyper + H_BETA2)
    weight = (1.0 - beta1).to(ACC)
    m_old = load(m_at, offs, n, DT, ACC, MASKED, ALIGNED)
    v_old = load(v_at, offs, n, DT, ACC, MASKED, ALIGNED)
    if tl.abs(weight) < 0.5:
        m = m_old + weight * (step - m_old)
    else:
        m = step - (step - m_old) * (1.0 - weight)
    v = beta2.to(ACC) * v_old + (1.0 - beta2).to(ACC) * step * step
    store(m_at, offs, n, tl.where(found, m_old, m), DT, MASKED, ALIGNED)
    store(v_at, offs, n, tl.where(found, v_old, v), DT, MASKED, ALIGNED)
    denom = div(sqrt(v, ACC), bc2_sqrt, ACC) + tl.load(hyper + H_ADAM_EPS).to(ACC)
    new = theta - div(step_size * m, denom, ACC)
    store(p_at, offs, n, tl.where(found, theta0, new), DT, MASKED, ALIGNED)


@triton.jit
def _adam_kernel(
    P,
    X,
    B,
    G,
    M,
    V,
    steps,
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
    DECOUPLED: tl.constexpr,
    BLOCK: tl.constexpr,
    LARGE: tl.constexpr,
):
    t, start, n = locate(work, numels, BLOCK, LARGE)
    offs = start + tl.arange(0, BLOCK)
    step_size, bc2_sqrt = adam_bias_corrections(hyper, steps, t)
    step_size = step_size.to(ACC)
    bc2_sqrt = bc2_sqrt.to(ACC)
    p_at = tl.load(P + t)
    x_at = tl.load(X + t)
    b_at = tl.load(B + t)
    g_at = tl.load(G + t)
    m_at = tl.load(M + t)
    v_at = tl.load(V + t)
    if start + BLOCK <= n:
        if aligned(p_at | x_at | b_at | g_at | m_at | v_at):
            _adam_chunk(
                p_at,
                x_at,
                b_at,
                g_at,
                m_at,
                v_at,
                sc,
                hyper,
                step_size,
                bc2_sqrt,
                eta,
                offs,
                n,
                DT,
                ACC,
                MAXIMIZE,
                ADAPTIVE,
                WEIGHT_DECAY,
                DECOUPLED,
                False,
                True,
            )
        else:
            _adam_chunk(
                p_at,
                x_at,
                b_at,
                g_at,
                m_at,
                v_at,
                sc,
                hyper,
                step_size,
                bc2_sqrt,
                eta,
                offs,
                n,
                DT,
                ACC,
                MAXIMIZE,
                ADAPTIVE,
                WEIGHT_DECAY,
                DECOUPLED,
                False,
                False,
            )
    else:
        _adam_chunk(
            p_at,
            x_at,
            b_at,
            g_at,
            m_at,
            v_at,
            sc,
            hyper,
            step_size,
            bc2_sqrt,
            eta,
            offs,
            n,
            DT,
            ACC,
            MAXIMIZE,
            ADAPTIVE,
            WEIGHT_DECAY,
            DECOUPLED,
            True,
            False,
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
    dt, acc = DTYPES[lay.dtype]
    buf_table = bufs.table if momentum else params.table  # never accessed without momentum
    _sgd_kernel[(lay.nblocks,)](
        params.table,
        points.table,
        backups.table,
        grads.table,
        buf_table,
        sc,
        hyper,
        packer.eta(eta, accumulation_dtype(lay.dtype), lay.device),
        lay.numels,
        lay.work,
        DT=dt,
        ACC=acc,
        MAXIMIZE=bool(maximize),
        ADAPTIVE=eta is not None,
        WEIGHT_DECAY=bool(weight_decay),
        MOMENTUM=bool(momentum),
        NESTEROV=bool(nesterov),
        INIT_BUFS=bool(init_bufs),
        BLOCK=lay.block,
        LARGE=lay.large,
        **LAUNCH_OPTIONS,
    )


def adam_update(
    packer: Packer,
    params: TritonList,
    points: TritonList,
    backups: TritonList,
    grads: TritonList,
    exp_avgs: TritonList,
    exp_avg_sqs: TritonList,
    steps: Tensor,
    sc: Tensor,
    hyper: Tensor,
    *,
    weight_decay: bool,
    decoupled: bool,
    maximize: bool,
    eta: float | None,
) -> None:
    lay = same_layout(params, points, backups, grads, exp_avgs, exp_avg_sqs)
    if lay.nblocks == 0:
        return
    dt, acc = DTYPES[lay.dtype]
    _adam_kernel[(lay.nblocks,)](
        params.table,
        points.table,
        backups.table,
        grads.table,
        exp_avgs.table,
        exp_avg_sqs.table,
        steps,
        sc,
        hyper,
        packer.eta(eta, accumulation_dtype(lay.dtype), lay.device),
        lay.numels,
        lay.work,
        DT=dt,
        ACC=acc,
        MAXIMIZE=bool(maximize),
        ADAPTIVE=eta is not None,
        WEIGHT_DECAY=bool(weight_decay),
        DECOUPLED=bool(decoupled),
        BLOCK=lay.block,
        LARGE=lay.large,
        **LAUNCH_OPTIONS,
    )
