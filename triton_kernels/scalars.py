"""The scalar math of an XSAM step on the device: one single-program kernel per call.

``ascent_scalars``, ``update_scalars`` and ``plain_scalars`` read and write the
float64 device-scalar vector ``sc`` (indices in ``xsam_fast/backends/base.py``)
exactly as their definitions in ``xsam_fast/coefficients.py`` do (the same
operations in the same order, in float64; NaN handled the same way), so a step
never synchronises with the host and can be captured in a CUDA graph. The device
functions :func:`ascent_scale` and :func:`adam_bias_corrections` are the scalars
the elementwise kernels derive per program.

Only core operations are used (``sqrt``, ``sin``, ``exp2``, ``log2``, arithmetic):
Triton's interpreter cannot call libdevice functions, and the same code must run
there. Hence :func:`acos`, built from a polynomial for ``asin`` on ``[0, 1/2]``:

    asin(z) = z + z w P(w),  w = z^2,  P of degree 12,

``P`` being the Chebyshev interpolant of ``(asin(z) - z) / z^3`` at 13 Chebyshev
nodes of ``w`` in ``[0, 1/4]`` (computed with mpmath at 60 digits; relative error of
``P`` below 8e-17 there, which ``z w P`` scales down by 20 more), coefficients
rounded to float64. Then ``acos(x) = pi/2 - asin(x)`` for ``|x| <= 1/2``, and
``2 asin(sqrt((1 - |x|) / 2))`` (or ``pi`` minus it for ``x < 0``) above, where
``1 - |x|`` is exact. Measured against numpy's ``arccos`` on a dense grid of
``[-1, 1]``: within 2.3e-16 relative (``test_triton_backend.py``).
"""

from __future__ import annotations

import math

import triton
import triton.language as tl
from torch import Tensor

from .. import coefficients
from ..backends import base
from .config import SCALAR_OPTIONS

# indices of sc and hyper (xsam_fast/backends/base.py)
SUMSQ: tl.constexpr = tl.constexpr(base.SUMSQ)
GG: tl.constexpr = tl.constexpr(base.GG)
DD: tl.constexpr = tl.constexpr(base.DD)
DG: tl.constexpr = tl.constexpr(base.DG)
PSI: tl.constexpr = tl.constexpr(base.PSI)
NORM_G: tl.constexpr = tl.constexpr(base.NORM_G)
NORM_D: tl.constexpr = tl.constexpr(base.NORM_D)
C_D: tl.constexpr = tl.constexpr(base.C_D)
C_G: tl.constexpr = tl.constexpr(base.C_G)
FOUND_INF: tl.constexpr = tl.constexpr(base.FOUND_INF)
OK: tl.constexpr = tl.constexpr(base.OK)
EPS: tl.constexpr = tl.constexpr(base.EPS)
MAX_NORM: tl.constexpr = tl.constexpr(base.MAX_NORM)
ALPHA: tl.constexpr = tl.constexpr(base.ALPHA)
SKIPPED: tl.constexpr = tl.constexpr(base.SKIPPED)
H_RADIUS: tl.constexpr = tl.constexpr(base.H_RADIUS)
H_LR: tl.constexpr = tl.constexpr(base.H_LR)
H_WEIGHT_DECAY: tl.constexpr = tl.constexpr(base.H_WEIGHT_DECAY)
H_MOMENTUM: tl.constexpr = tl.constexpr(base.H_MOMENTUM)
H_DAMPENING: tl.constexpr = tl.constexpr(base.H_DAMPENING)
H_BETA1: tl.constexpr = tl.constexpr(base.H_BETA1)
H_BETA2: tl.constexpr = tl.constexpr(base.H_BETA2)
H_ADAM_EPS: tl.constexpr = tl.constexpr(base.H_ADAM_EPS)

SIN_PSI_MIN: tl.constexpr = tl.constexpr(coefficients.SIN_PSI_MIN)
CLIP_EPS: tl.constexpr = tl.constexpr(coefficients.CLIP_EPS)
PI: tl.constexpr = tl.constexpr(math.pi)
HALF_PI: tl.constexpr = tl.constexpr(math.pi / 2)


# ------------------------------------------------------------------ device functions
@triton.jit
def finite(x):
    """False for inf and NaN."""
    return x - x == 0


@triton.jit
def safe_div(num, den):
    """``num / den``, and 0 where ``den == 0`` (never ``0 / 0``; ``coefficients._div``)."""
    nonzero = den != 0
    return tl.where(nonzero, num / tl.where(nonzero, den, 1.0), 0.0)


@triton.jit
def _asin_small(z):
    """``asin(z)`` for float64 ``z`` in ``[0, 1/2]`` (see the module docstring)."""
    w = z * z
    p = 0.028757851367421566 * w - 0.014851887071247204
    p = p * w + 0.01740087944269402
    p = p * w + 0.005457506718640358
    p = p * w + 0.01032281435018578
    p = p * w + 0.011479177415184906
    p = p * w + 0.013971212973552933
    p = p * w + 0.017352392720869973
    p = p * w + 0.02237217294214989
    p = p * w + 0.030381944138531247
    p = p * w + 0.04464285714635543
    p = p * w + 0.07499999999998433
    p = p * w + 0.16666666666666669
    return z + z * w * p


@triton.jit
def acos(x):
    """``arccos(x)`` of a float64 ``x`` in ``[-1, 1]`` (NaN outside, and for NaN)."""
    ax = tl.abs(x)
    big = ax > 0.5
    a = _asin_small(tl.where(big, tl.sqrt((1.0 - ax) * 0.5), ax))
    return tl.where(big, tl.where(x > 0, 2.0 * a, PI - 2.0 * a), HALF_PI - tl.where(x < 0, -a, a))


@triton.jit
def ascent_scale(sc, hyper):
    """``coefficients.ascent_scale_of``: ``hyper[H_RADIUS] / (sqrt(sc[SUMSQ]) + sc[EPS])``,
    0 where the denominator is 0 or ``sc[FOUND_INF]`` is set (float64)."""
    scale = safe_div(tl.load(hyper + H_RADIUS), tl.sqrt(tl.load(sc + SUMSQ)) + tl.load(sc + EPS))
    return tl.where(tl.load(sc + FOUND_INF) != 0, 0.0, scale)


@triton.jit
def _power(b, e):
    """``b ** e`` for float64 ``b >= 0`` as ``exp2(e log2(b))`` (core operations only;
    relative error about ``|e log2(b)|`` ulps, under 1e-13 while the result is not
    below 2**-1000)."""
    return tl.exp2(e * tl.log2(b))


@triton.jit
def adam_bias_corrections(hyper, steps, t):
    """``(step_size, bias_correction2_sqrt)`` of tensor ``t`` in float64, as torch
    computes them: ``lr / (1 - beta1**step)``, ``sqrt(1 - beta2**step)``, ``step =
    steps[t]``."""
    step = tl.load(steps + t).to(tl.float64)
    step_size = tl.load(hyper + H_LR) / (1.0 - _power(tl.load(hyper + H_BETA1), step))
    return step_size, tl.sqrt(1.0 - _power(tl.load(hyper + H_BETA2), step))


@triton.jit
def _set_found(sc, bad, KEEP: tl.constexpr, CHECK: tl.constexpr):
    """``FOUND_INF = (FOUND_INF if KEEP else 0) or (CHECK and bad)``; returns it."""
    if CHECK:
        found = tl.where(bad, 1.0, 0.0).to(tl.float64)
    else:
        found = tl.full([], 0.0, tl.float64)
    if KEEP:
        old = tl.load(sc + FOUND_INF)
        found = tl.where(old > found, old, found)
    tl.store(sc + FOUND_INF, found)
    return found


@triton.jit
def _end_step(sc, found):
    """``OK = 1 - FOUND_INF``; ``SKIPPED += FOUND_INF`` (``found`` in registers: a program
    does not read back what it stored)."""
    tl.store(sc + OK, 1.0 - found)
    tl.store(sc + SKIPPED, tl.load(sc + SKIPPED) + found)


@triton.jit
def _g_norm_sq(cd, cg, gg, dd, dg):
    """``coefficients.g_norm_sq``: ``||c_d d + c_g g||^2`` from the sums, same order."""
    return cd * cd * dd + cg * cg * gg + 2.0 * cd * cg * dg


# ------------------------------------------------------------------ kernels
@triton.jit
def _ascent_scalars_kernel(sc, FIRST: tl.constexpr, CHECK: tl.constexpr):
    _set_found(sc, ~finite(tl.load(sc + SUMSQ)), not FIRST, CHECK)


@triton.jit
def _plain_scalars_kernel(sc, CHECK: tl.constexpr):
    found = _set_found(sc, ~finite(tl.load(sc + SUMSQ)), False, CHECK)
    tl.store(sc + C_D, tl.full([], 0.0, tl.float64))
    tl.store(sc + C_G, tl.full([], 1.0, tl.float64))
    _end_step(sc, found)


@triton.jit
def _update_scalars_kernel(sc, CHECK: tl.constexpr):
    gg = tl.load(sc + GG)
    dd = tl.load(sc + DD)
    dg = tl.load(sc + DG)
    eps = tl.load(sc + EPS)
    alpha = tl.load(sc + ALPHA)
    max_norm = tl.load(sc + MAX_NORM)
    # angle: the cosine clamped to [-1, 1] (NaN stays NaN), 0 when a norm and eps are 0
    norm_g = tl.sqrt(gg)
    norm_d = tl.sqrt(dd)
    cos = safe_div(dg, (norm_d + eps) * (norm_g + eps))
    cos = tl.where(cos < -1.0, -1.0, tl.where(cos > 1.0, 1.0, cos))
    psi = acos(cos)
    # coefficients of ||g|| v(alpha); (v0 + v1) / 2 for (anti-)parallel directions
    sin_psi = tl.sin(psi)
    degenerate = sin_psi < SIN_PSI_MIN
    safe_sin = tl.where(degenerate, 1.0, sin_psi)
    a = tl.where(degenerate, 0.5, tl.sin((1.0 - alpha) * psi) / safe_sin)
    b = tl.where(degenerate, 0.5, tl.sin(alpha * psi) / safe_sin)
    cd = safe_div(norm_g * a, norm_d + eps)
    cg = safe_div(norm_g * b, norm_g + eps)
    # clipping of ||G|| to MAX_NORM (when >= 0); clamp_min(0) and min(1) keep NaN
    sq = _g_norm_sq(cd, cg, gg, dd, dg)
    sq = tl.where(sq < 0.0, 0.0, sq)
    clip = tl.where(max_norm < 0.0, 0.0, max_norm) / (tl.sqrt(sq) + CLIP_EPS)
    clip = tl.where(clip > 1.0, 1.0, clip)
    clip = tl.where(max_norm >= 0.0, clip, 1.0)
    cd = cd * clip
    cg = cg * clip
    bad = ~(
        finite(gg)
        & finite(dd)
        & finite(dg)
        & finite(cd)
        & finite(cg)
        & finite(_g_norm_sq(cd, cg, gg, dd, dg))
    )
    tl.store(sc + PSI, psi)
    tl.store(sc + NORM_G, norm_g)
    tl.store(sc + NORM_D, norm_d)
    tl.store(sc + C_D, cd)
    tl.store(sc + C_G, cg)
    _end_step(sc, _set_found(sc, bad, True, CHECK))


# ------------------------------------------------------------------ launchers
def ascent_scalars(sc: Tensor, first: bool, check: bool) -> None:
    _ascent_scalars_kernel[(1,)](sc, FIRST=bool(first), CHECK=bool(check), **SCALAR_OPTIONS)


def update_scalars(sc: Tensor, check: bool) -> None:
    _update_scalars_kernel[(1,)](sc, CHECK=bool(check), **SCALAR_OPTIONS)


def plain_scalars(sc: Tensor, check: bool) -> None:
    _plain_scalars_kernel[(1,)](sc, CHECK=bool(check), **SCALAR_OPTIONS)
