"""Interpolation fused with ``torch.optim.Adam``/``AdamW`` (amsgrad off), from theta_0.

``G`` (:func:`.common.direction`) is formed in registers and fed to Adam's update;
the operations follow the reference backend one by one (same order, one rounding
each; the moment's lerp fused as torch computes it). The coefficients and the skip
flag are read from ``sc``, the hyper-parameters from the float64 ``hyper`` (derived
factors such as ``1 - beta1`` and ``1 - lr wd`` formed in float64, then rounded),
each tensor's step from ``steps`` (bias corrections in float64,
:func:`.scalars.adam_bias_corrections`). Where ``sc[FOUND_INF]`` is set, params get
theta_0 back and the moments keep their values. One launch per call.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from .common import direction, div, load, locate, on_path, sqrt, store
from .packing import Packer, TritonList, same_layout
from .scalars import (
    FOUND_INF,
    H_ADAM_EPS,
    H_BETA1,
    H_BETA2,
    H_LR,
    H_WEIGHT_DECAY,
    adam_bias_corrections,
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
    theta0, step = direction(
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
    on_path(
        _adam_chunk,
        (
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
        ),
        start,
        n,
        p_at | x_at | b_at | g_at | m_at | v_at,
        BLOCK,
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
    packer.launch(
        _adam_kernel,
        lay,
        (
            params.table,
            points.table,
            backups.table,
            grads.table,
            exp_avgs.table,
            exp_avg_sqs.table,
            steps,
            sc,
            hyper,
        ),
        eta,
        MAXIMIZE=bool(maximize),
        WEIGHT_DECAY=bool(weight_decay),
        DECOUPLED=bool(decoupled),
    )
