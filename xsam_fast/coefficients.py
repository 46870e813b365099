"""Scalar math of an XSAM step: the reference definition every backend follows.

Everything here works on 0-d (or small 1-d) float64 tensors on the parameters'
device, so a step without alpha search never synchronises with the host. The
elementwise passes (kernels) only ever see the results: an ascent scale, or a
pair of coefficients ``(c_d, c_g)`` meaning

    out = theta_0 + c_d * (point - theta_0) + c_g * g          (a search point)
    G   =           c_d * (point - theta_0) + c_g * g          (the update direction)

Notation follows ``docs/algorithm.md``: ``d = point - theta_0`` is the
displacement of the ascent, ``g`` the gradient at the ascent point, ``psi`` the
angle between them. The functions ``ascent_scalars``, ``update_scalars`` and
``plain_scalars`` read and write the device-scalar vector ``sc`` of
:mod:`xsam_fast.backends.base`; fast backends compute the same in one small
kernel (C++: ``csrc/common/step_scalars.h``; Triton:
``triton_kernels/scalars.py``) and are tested against these.

Degenerate cases, defined so that no step writes NaN from finite inputs:

* a zero vector has the unit vector 0 (what ``d / (||d|| + eps)`` gives for
  ``eps > 0``), so with ``eps = 0`` a zero ``d`` (``rho = 0``) or a zero ``g`` gives
  ``cos(psi) = 0`` and a zero coefficient for that vector, not ``0 / 0``;
* ``sin(psi) < 1e-8`` (parallel or anti-parallel directions): ``v(alpha) =
  (v0 + v1) / 2`` whatever alpha (the authors' rule);
* the ascent scale is 0 when ``||g|| + eps = 0``.

Adaptive (ASAM, Kwon et al. 2021) geometry, ``XSAM(adaptive=True)``: the step
works in the rescaled space ``u = T^{-1} w`` with ``T = diag(|theta_0| + eta)``;
the functions here are used unchanged on the u-space sums
``[sum T^2 g^2, sum d^2 / T^2, sum d g]`` (see ``backends/base.py``).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .backends.base import (
    ALPHA,
    C_D,
    C_G,
    COEFFS,
    DG,
    EPS,
    FOUND_INF,
    GG,
    H_RADIUS,
    MAX_NORM,
    NORM_D,
    NORM_G,
    OK,
    PSI,
    SKIPPED,
    SUMSQ,
)

#: below this value of ``sin(psi)`` the two directions count as parallel and
#: ``v(alpha) = (v0 + v1) / 2`` whatever alpha (the authors' rule).
SIN_PSI_MIN = 1e-8
#: added to ``||G||`` in the clipping factor, as ``torch.nn.utils.clip_grad_norm_`` does
CLIP_EPS = 1e-6


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype in which reductions and elementwise math run for parameters of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _div(num: Tensor, den: Tensor) -> Tensor:
    """``num / den``, and 0 where ``den == 0`` (never ``0 / 0``)."""
    nonzero = den != 0
    return torch.where(
        nonzero, num / torch.where(nonzero, den, torch.ones_like(den)), torch.zeros_like(num)
    )


def ascent_scale(sumsq: Tensor, radius: Tensor | float, eps: Tensor | float) -> Tensor:
    """``radius / (||g|| + eps)`` from ``sumsq = ||g||^2`` (0-d tensors); 0 when the
    denominator is 0."""
    if not isinstance(radius, Tensor):
        radius = torch.full_like(sumsq, radius)
    return _div(radius, sumsq.sqrt() + eps)


def angle(sums: Tensor, eps: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
    """Angle and norms from the one-pass sums ``[||g||^2, ||d||^2, <d, g>]``.

    Returns ``(psi, ||g||, ||d||)`` as 0-d tensors. The cosine is clamped to
    [-1, 1] (the authors' code is not, and can take arccos of 1 + 1 ulp), and is
    0 when a norm and ``eps`` are both 0.
    """
    norm_g = sums[0].sqrt()
    norm_d = sums[1].sqrt()
    cos = _div(sums[2], (norm_d + eps) * (norm_g + eps))
    return torch.arccos(cos.clamp(-1.0, 1.0)), norm_g, norm_d


def interpolation_coefficients(
    scale: Tensor | float,
    alpha: Tensor | float,
    psi: Tensor,
    norm_g: Tensor,
    norm_d: Tensor,
    eps: Tensor | float,
) -> Tensor:
    """Coefficients ``(c_d, c_g)`` of ``scale * v(alpha)`` in the basis ``(d, g)``.

    ``v(alpha) = sin((1-alpha) psi)/sin(psi) * v0 + sin(alpha psi)/sin(psi) * v1``
    with ``v0 = d/(||d||+eps)``, ``v1 = g/(||g||+eps)``; ``(v0 + v1)/2`` when
    ``sin(psi) < 1e-8``. ``alpha`` may be a 1-d tensor of K values: the result
    then has shape (K, 2), else (2,). ``scale`` is ``||g||`` for the update and
    ``rho_max`` for a search point. A coefficient is 0 when its norm plus ``eps`` is 0.
    """
    alpha = (
        alpha.to(psi.dtype)
        if isinstance(alpha, Tensor)
        else torch.as_tensor(alpha, dtype=psi.dtype, device=psi.device)
    )
    sin_psi = torch.sin(psi)
    degenerate = sin_psi < SIN_PSI_MIN
    safe_sin = torch.where(degenerate, torch.ones_like(sin_psi), sin_psi)
    half = torch.full_like(alpha, 0.5)
    a = torch.where(degenerate, half, torch.sin((1.0 - alpha) * psi) / safe_sin)
    b = torch.where(degenerate, half, torch.sin(alpha * psi) / safe_sin)
    return torch.stack([_div(scale * a, norm_d + eps), _div(scale * b, norm_g + eps)], dim=-1)


def g_norm_sq(coeffs: Tensor, sums: Tensor) -> Tensor:
    """``||G||^2`` for ``G = c_d d + c_g g``, from the one-pass sums (no pass over G):
    ``c_d^2 ||d||^2 + c_g^2 ||g||^2 + 2 c_d c_g <d, g>``."""
    c_d, c_g = coeffs[..., 0], coeffs[..., 1]
    return c_d * c_d * sums[1] + c_g * c_g * sums[0] + 2 * c_d * c_g * sums[2]


def clip_factor(coeffs: Tensor, sums: Tensor, max_norm: Tensor | float) -> Tensor:
    """``min(1, max_norm / (||G|| + 1e-6))`` for ``G = c_d d + c_g g``, from the one-pass sums."""
    return (max_norm / (g_norm_sq(coeffs, sums).clamp_min(0).sqrt() + CLIP_EPS)).clamp(max=1.0)


def alpha_grid(alpha_max: float, alpha_delta: float) -> list[float]:
    """The authors' search grid ``numpy.arange(0, alpha_max + 1e-5, alpha_delta)``.

    Kept bit-identical to theirs (0.30000000000000004 included) so that the same
    loss curve selects the same alpha.
    """
    return [float(a) for a in np.arange(0.0, alpha_max + 1e-5, alpha_delta)]


def best_alpha(alphas: Sequence[float], losses: Sequence[float]) -> float | None:
    """The first alpha with the largest finite loss; None when no loss is finite.

    The authors start from ``(alpha, loss) = (0, 0)`` and take strictly larger
    losses, which returns 0 whenever every loss is negative (Gaussian NLL, -ELBO,
    shifted losses). Whenever some loss is positive both rules pick the same alpha.
    """
    best, best_loss = None, -math.inf
    for a, loss in zip(alphas, losses):
        if math.isfinite(loss) and (best is None or loss > best_loss):
            best, best_loss = a, loss
    return best


# ------------------------------------------------------------------ the device scalars
def _finite(*values: Tensor) -> Tensor:
    return torch.stack([torch.isfinite(v) for v in values]).all()


def _set_found(sc: Tensor, bad: Tensor, *, keep: bool, check: bool) -> None:
    """``FOUND_INF = (FOUND_INF if keep else 0) or (check and bad)``."""
    found = bad.to(sc.dtype) if check else torch.zeros_like(sc[FOUND_INF])
    if keep:
        found = torch.maximum(found, sc[FOUND_INF])
    sc[FOUND_INF] = found


def _end_step(sc: Tensor) -> None:
    sc[OK] = 1.0 - sc[FOUND_INF]
    sc[SKIPPED] = sc[SKIPPED] + sc[FOUND_INF]


def ascent_scalars(sc: Tensor, *, first: bool, check: bool) -> None:
    """After an ascent pass's ``sumsq``: ``FOUND_INF = (0 if first else FOUND_INF) or
    (check and not isfinite(SUMSQ))``."""
    _set_found(sc, ~torch.isfinite(sc[SUMSQ]), keep=not first, check=check)


def ascent_scale_of(sc: Tensor, hyper: Tensor) -> Tensor:
    """The ascent scale of a bucket (float64, 0-d): ``ascent_scale`` of ``sc[SUMSQ]`` with
    the bucket's radius ``hyper[H_RADIUS]``, and 0 once ``sc[FOUND_INF]`` is set."""
    scale = ascent_scale(sc[SUMSQ], hyper[H_RADIUS], sc[EPS])
    return torch.where(sc[FOUND_INF] != 0, torch.zeros_like(scale), scale)


def update_scalars(sc: Tensor, *, check: bool) -> None:
    """After the final sums ``sc[SUMS]``: ``PSI, NORM_G, NORM_D``; the coefficients of
    ``G = ||g|| v(ALPHA)``, times the clipping factor when ``MAX_NORM >= 0``;
    ``FOUND_INF`` (kept from the ascents) also set when a sum, a coefficient or
    ``||G||^2`` is not finite (and ``check``); ``OK``; ``SKIPPED`` counts the step if
    it is skipped. All in float64."""
    sums = sc[GG : DG + 1]
    eps = sc[EPS]
    psi, norm_g, norm_d = angle(sums, eps)
    coeffs = interpolation_coefficients(norm_g, sc[ALPHA], psi, norm_g, norm_d, eps)
    max_norm = sc[MAX_NORM]
    clip = torch.where(
        max_norm >= 0, clip_factor(coeffs, sums, max_norm.clamp_min(0)), torch.ones_like(max_norm)
    )
    coeffs = coeffs * clip
    bad = ~_finite(sums[0], sums[1], sums[2], coeffs[0], coeffs[1], g_norm_sq(coeffs, sums))
    sc[PSI], sc[NORM_G], sc[NORM_D] = psi, norm_g, norm_d
    sc[COEFFS] = coeffs
    _set_found(sc, bad, keep=True, check=check)
    _end_step(sc)


def plain_scalars(sc: Tensor, *, check: bool) -> None:
    """After a plain step's ``sumsq``: ``FOUND_INF = check and not isfinite(SUMSQ)``;
    ``C_D = 0``, ``C_G = 1`` (``G = g``); ``OK``; ``SKIPPED``."""
    _set_found(sc, ~torch.isfinite(sc[SUMSQ]), keep=False, check=check)
    sc[C_D] = 0.0
    sc[C_G] = 1.0
    _end_step(sc)
