"""Scalar math of an XSAM step, shared by every backend.

Everything here works on 0-d (or small 1-d) tensors that live on the
parameters' device, so a step without alpha search never synchronises with the
host. The elementwise passes (kernels) only ever see the results: an ascent
scale, or a pair of coefficients ``(c_d, c_g)`` meaning

    out = theta_0 + c_d * (point - theta_0) + c_g * g          (a search point)
    G   =           c_d * (point - theta_0) + c_g * g          (the update direction)

Notation follows ``XSAM_MATH.md``: ``d = point - theta_0`` is the displacement of
the ascent, ``g`` the gradient at the ascent point, ``psi`` the angle between
them.

Adaptive (ASAM, Kwon et al. 2021) geometry, ``XSAM(adaptive=True)``: the step
works in the rescaled space ``u = T^{-1} w`` with ``T = diag(|theta_0| + eta)``
(``T = 1`` on tensors that are not adaptive: with ``adaptive_weights_only``,
those with ``ndim <= 1``). In u-space the gradient is ``g_u = T g`` and the
displacement ``d_u = T^{-1} d``, so the functions here are used unchanged on

    sums   = [||g_u||^2, ||d_u||^2, <d_u, g_u>] = [sum T^2 g^2, sum d^2 / T^2, sum d g]
    norm_g = ||g_u||,  norm_d = ||d_u||,  psi = angle(d_u, g_u)

and only the elementwise passes change (T is formed from theta_0 on the fly):

    ascent  theta += r T^2 g / (||g_u|| + eps)          (r = rho / steps)
    out     = theta_0 + c_d d + c_g T^2 g               (= theta_0 + T rho_max v_u(alpha))
    G       =           c_d d / T^2 + c_g g             (= T^{-1} ||g_u|| v_u(alpha))

With ``T = 1`` all of it is plain XSAM.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

#: below this value of ``sin(psi)`` the two directions count as parallel and
#: ``v(alpha) = (v0 + v1) / 2`` whatever alpha (the authors' rule).
SIN_PSI_MIN = 1e-8


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype in which reductions and elementwise math run for parameters of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def ascent_scale(sumsq: Tensor, radius: float, eps: float) -> Tensor:
    """``radius / (||g|| + eps)`` from ``sumsq = ||g||^2`` (0-d tensor)."""
    return radius / (sumsq.sqrt() + eps)


def angle(sums: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Angle and norms from the one-pass sums ``[||g||^2, ||d||^2, <d, g>]``.

    Returns ``(psi, ||g||, ||d||)`` as 0-d tensors. The cosine is clamped to
    [-1, 1] (the authors' code is not, and can take arccos of 1 + 1 ulp).
    """
    norm_g = sums[0].sqrt()
    norm_d = sums[1].sqrt()
    cos = sums[2] / ((norm_d + eps) * (norm_g + eps))
    return torch.arccos(cos.clamp(-1.0, 1.0)), norm_g, norm_d


def interpolation_coefficients(
    scale: Tensor | float,
    alpha: Tensor | float,
    psi: Tensor,
    norm_g: Tensor,
    norm_d: Tensor,
    eps: float,
) -> Tensor:
    """Coefficients ``(c_d, c_g)`` of ``scale * v(alpha)`` in the basis ``(d, g)``.

    ``v(alpha) = sin((1-alpha) psi)/sin(psi) * v0 + sin(alpha psi)/sin(psi) * v1``
    with ``v0 = d/(||d||+eps)``, ``v1 = g/(||g||+eps)``; ``(v0 + v1)/2`` when
    ``sin(psi) < 1e-8``. ``alpha`` may be a 1-d tensor of K values: the result
    then has shape (K, 2), else (2,). ``scale`` is ``||g||`` for the update and
    ``rho_max`` for a search point.
    """
    alpha = torch.as_tensor(alpha, dtype=psi.dtype, device=psi.device)
    sin_psi = torch.sin(psi)
    degenerate = sin_psi < SIN_PSI_MIN
    safe_sin = torch.where(degenerate, torch.ones_like(sin_psi), sin_psi)
    half = torch.full_like(alpha, 0.5)
    a = torch.where(degenerate, half, torch.sin((1.0 - alpha) * psi) / safe_sin)
    b = torch.where(degenerate, half, torch.sin(alpha * psi) / safe_sin)
    return torch.stack([scale * a / (norm_d + eps), scale * b / (norm_g + eps)], dim=-1)


def clip_factor(coeffs: Tensor, sums: Tensor, max_norm: float) -> Tensor:
    """``min(1, max_norm / (||G|| + 1e-6))`` for ``G = c_d d + c_g g``, from the one-pass sums.

    ``||G||^2 = c_d^2 ||d||^2 + c_g^2 ||g||^2 + 2 c_d c_g <d, g>`` needs no pass over G.
    """
    c_d, c_g = coeffs[0], coeffs[1]
    sq = c_d * c_d * sums[1] + c_g * c_g * sums[0] + 2 * c_d * c_g * sums[2]
    return (max_norm / (sq.clamp_min(0).sqrt() + 1e-6)).clamp(max=1.0)


def alpha_grid(alpha_max: float, alpha_delta: float) -> list[float]:
    """The authors' search grid ``numpy.arange(0, alpha_max + 1e-5, alpha_delta)``.

    Kept bit-identical to theirs (0.30000000000000004 included) so that the same
    loss curve selects the same alpha.
    """
    return [float(a) for a in np.arange(0.0, alpha_max + 1e-5, alpha_delta)]


def best_alpha(alphas: Sequence[float], losses: Sequence[float]) -> float:
    """The authors' selection rule: first alpha with the strictly largest loss, from (0, 0)."""
    best, best_loss = 0.0, 0.0
    for a, loss in zip(alphas, losses):
        if loss > best_loss:
            best, best_loss = a, loss
    return best
