"""The contract every XSAM backend implements: one call per phase per bucket.

A *bucket* is a set of parameters that share one device and one dtype (the
step plan, :mod:`xsam_fast.plan`, splits param groups into buckets). Its tensor
lists are *packed* by the backend (:meth:`Backend.pack`) once per plan, and the
gradients once per backward pass; every phase takes packed lists, so a backend
keeps whatever it needs per list (C++ tensor vectors, device pointer tables)
and a step converts nothing per tensor. Every list argument of a call has the
same length and lines up element by element, tensor ``i`` of every list having
the shape and strides of tensor ``i`` of the first. Fast backends require
tensors that are dense and non-overlapping (channels_last included; see
:mod:`xsam_fast.backends.packed`) and step them in memory order; the reference
backend takes any strides.

Math runs in :func:`xsam_fast.coefficients.accumulation_dtype` of the bucket
(float32 for float32/bfloat16/float16, float64 for float64) and 16-bit results
are rounded to nearest even once, when stored. No phase may synchronise with
the host. Reductions must be deterministic: the same inputs give bit-identical
sums whatever the number of threads or blocks.

Names: ``params`` are written in place; ``points`` hold the ascent point
(``params`` itself, except during an alpha search, when it is a saved copy);
``backups`` hold theta_0; ``grads`` hold g (read only unless said otherwise).

Device scalars
--------------
The scalars of a step live on the device, in one float64 vector ``sc`` per
device (length :data:`NSCALARS`, indices below), which the optimizer owns and
keeps across steps. Reductions add into it, the ``*_scalars`` calls derive the
step's scalars from it in one small computation, and the elementwise phases read
it; the host never reads it during a step. Its entries:

=============  =====================================================================
``SUMSQ``      ``||g_u||^2`` of the current ascent (or plain) pass
``GG DD DG``   the final sums ``[||g_u||^2, ||d_u||^2, <d_u, g_u>]`` (:data:`SUMS`)
``PSI``        angle between ``d_u`` and ``g_u``; ``NORM_G``, ``NORM_D`` their norms
``C_D C_G``    coefficients of the update direction ``G = c_d d + c_g g`` (:data:`COEFFS`)
``FOUND_INF``  1.0 once a sum or coefficient of this step was non-finite, else 0.0
``OK``         ``1 - FOUND_INF``
``EPS``        the ``eps`` added to every norm
``MAX_NORM``   ``max_grad_norm`` (clip G to this norm), or -1 for no clipping
``ALPHA``      the interpolation parameter alpha
``SKIPPED``    steps skipped so far (counted by the ``*_scalars`` that end a step)
=============  =====================================================================

``FOUND_INF`` works like ``found_inf`` in torch's fused optimizers: when it is set,
the update phases write theta_0 back into ``params`` and leave the optimizer
state (momentum, moments) as it was; the ascent moves nothing.

Hyper-parameters
----------------
The per-bucket hyper-parameters are a float64 vector ``hyper`` on the bucket's
device (indices ``H_*`` below), kept by the step plan and rewritten (``fill_``)
only when a value changes, so that a step makes no tensor from Python data.
Switches that change the code path (momentum on/off, Nesterov, maximize, decoupled
weight decay, ...) are Python arguments.

Adaptive (ASAM) geometry
------------------------
Every phase takes a keyword ``eta: float | None``. ``None`` is plain XSAM. A float
``eta > 0`` makes the phase work in the rescaled space ``u = w / T`` with the
elementwise ``T = |theta_0| + eta``, computed on the fly from theta_0 (the
``backups``, or the ``weights`` given to :meth:`Backend.sumsq`; no stored T).
With ``d = points - backups`` the adaptive forms are, elementwise::

    sumsq        sum (T g)^2                                  (= ||g_u||^2)
    ascent       params += scale * (T*T * g)
    final_sums   [sum (T g)^2, sum (d / T)^2, sum d g]        (= ||g_u||^2, ||d_u||^2, <d_u, g_u>)
    point        backups + (c_d d + c_g (T*T * g))            (search point)
    G            c_d q + c_g g,  q = d / (T*T), or 0 where T*T == 0
                                                              (update direction, for
                                                               write_grad_restore, sgd, adam)

computed in this order (``t = |theta_0| + eta``; ``t*t`` once; one rounding per
operation). ``q`` is never formed as ``0 / 0``: where ``T*T`` underflows to 0 the
ascent moved nothing (``d = 0``), and ``q`` is 0. ``eta`` is a Python float; the math
uses it in the accumulation dtype.
"""

from __future__ import annotations

import abc
from typing import Sequence

import torch
from torch import Tensor

from .packed import TensorList, check_layout


# ------------------------------------------------------------------ device scalars
SUMSQ = 0
GG, DD, DG = 1, 2, 3
PSI, NORM_G, NORM_D = 4, 5, 6
C_D, C_G = 7, 8
FOUND_INF = 9
OK = 10
EPS = 11
MAX_NORM = 12
ALPHA = 13
SKIPPED = 14
NSCALARS = 15
#: the three final sums, and the two update coefficients, as slices of ``sc``
SUMS = slice(GG, DG + 1)
COEFFS = slice(C_D, C_G + 1)

# ------------------------------------------------------------------ hyper-parameters
H_RADIUS = 0  # ascent length of one ascent step, rho / steps
H_LR = 1
H_WEIGHT_DECAY = 2
H_MOMENTUM = 3  # SGD
H_DAMPENING = 4  # SGD
H_BETA1 = 3  # Adam (shares the slots of SGD's momentum and dampening)
H_BETA2 = 4  # Adam
H_ADAM_EPS = 5  # Adam
NHYPER = 6


class Backend(abc.ABC):
    """One implementation of the fused XSAM phases."""

    #: name accepted by ``XSAM(backend=...)``
    name: str = ""
    #: whether packed lists read each tensor's current storage at every call (a parameter
    #: whose storage is replaced, same shape and strides, needs no new plan); else the
    #: lists keep the addresses they were packed with
    follows_storage: bool = False

    @classmethod
    @abc.abstractmethod
    def is_available(cls) -> tuple[bool, str]:
        """``(True, "")`` when the backend runs here, else ``(False, why)``."""

    @abc.abstractmethod
    def supports(self, device: torch.device, dtype: torch.dtype) -> bool:
        """Whether buckets on ``device`` with ``dtype`` can be handled."""

    # ------------------------------------------------------------------ lists
    def pack(
        self, tensors: Sequence[Tensor], like: TensorList | None = None, *, grads: bool = False
    ) -> TensorList:
        """``tensors`` in this backend's form. With ``like``, tensor ``i`` must have the
        device, dtype, shape and strides of ``like[i]`` (raises :class:`LayoutError`);
        fast backends also require dense, non-overlapping tensors. ``grads``: the tensors
        are ``like``'s gradients, packed at every backward pass (see :func:`check_layout`:
        only the strides need checking)."""
        check_layout(tensors, like, dense=True, grads=grads)
        return TensorList(tensors)

    # ------------------------------------------------------------------ reductions
    @abc.abstractmethod
    def sumsq(
        self,
        grads: TensorList,
        out: Tensor,
        *,
        accumulate: bool,
        weights: TensorList | None = None,
        eta: float | None = None,
    ) -> None:
        """``out[0] = sum_i ||grads[i]||^2`` (``+=`` if ``accumulate``); ``out`` is a float64
        1-element tensor on the bucket's device (``sc[SUMSQ:SUMSQ + 1]``). The sum runs in
        the accumulation dtype and is converted to float64 once, then added.

        With ``eta``: ``sum_i ||(|weights[i]| + eta) * grads[i]||^2`` (``weights``, same
        shapes, hold theta_0: the params at the first ascent, when the backups are written
        in the same pass, the backups afterwards); ``weights`` is required with ``eta``.
        """

    @abc.abstractmethod
    def final_sums(
        self,
        points: TensorList,
        backups: TensorList,
        grads: TensorList,
        out: Tensor,
        *,
        accumulate: bool,
        eta: float | None = None,
    ) -> None:
        """One pass: ``out[0:3] = [||g||^2, ||d||^2, <d, g>]`` (``+=`` if ``accumulate``),
        ``d = points - backups``; ``out`` is float64 (``sc[SUMS]``), as in :meth:`sumsq`.

        With ``eta``: ``[sum (T g)^2, sum (d / T)^2, sum d g]``, ``T = |backups| + eta``.
        """

    # ------------------------------------------------------------------ scalars
    def ascent_scalars(self, sc: Tensor, *, first: bool, check: bool) -> None:
        """After the ``sumsq`` of an ascent pass: ``FOUND_INF = (0 if first else FOUND_INF)
        or (check and SUMSQ is not finite)``. See :func:`xsam_fast.coefficients.ascent_scalars`."""
        from .. import coefficients

        coefficients.ascent_scalars(sc, first=first, check=check)

    def update_scalars(self, sc: Tensor, *, check: bool) -> None:
        """After the final sums: angle, norms, coefficients (clipped by ``MAX_NORM``),
        ``FOUND_INF``, ``OK`` and ``SKIPPED``. See
        :func:`xsam_fast.coefficients.update_scalars`, the definition."""
        from .. import coefficients

        coefficients.update_scalars(sc, check=check)

    def plain_scalars(self, sc: Tensor, *, check: bool) -> None:
        """After the ``sumsq`` of a plain base step (``interval > 1``): ``FOUND_INF``,
        ``C_D = 0``, ``C_G = 1`` (so ``G = g``), ``OK``, ``SKIPPED``. See
        :func:`xsam_fast.coefficients.plain_scalars`."""
        from .. import coefficients

        coefficients.plain_scalars(sc, check=check)

    # ------------------------------------------------------------------ elementwise
    @abc.abstractmethod
    def backup_ascent(
        self,
        params: TensorList,
        grads: TensorList,
        backups: TensorList,
        sc: Tensor,
        hyper: Tensor,
        *,
        backup: bool,
        eta: float | None = None,
    ) -> None:
        """``backups <- params`` (only if ``backup``), then ``params += scale * grads`` with
        ``scale = ascent_scale(sc, hyper)`` (:func:`xsam_fast.coefficients.ascent_scale`:
        ``hyper[H_RADIUS] / (sqrt(sc[SUMSQ]) + sc[EPS])``, 0 where ``sc[FOUND_INF]`` is set
        or the denominator is 0; in float64, then rounded to the accumulation dtype).

        With ``eta``: ``params += scale * (T*T * grads)``, ``T = |theta_0| + eta`` where
        theta_0 is the params before this pass if ``backup`` (they are theta_0 then),
        else the ``backups`` (which are then read).
        """

    @abc.abstractmethod
    def write_point(
        self,
        out: TensorList,
        points: TensorList,
        backups: TensorList,
        grads: TensorList,
        coeffs: Tensor,
        *,
        eta: float | None = None,
    ) -> None:
        """``out = backups + (coeffs[0] * (points - backups) + coeffs[1] * grads)``;
        ``coeffs`` is a 2-element float tensor on the device (read in the accumulation dtype).

        With ``eta``: ``out = backups + (c_d d + c_g (T*T * grads))``, ``T = |backups| + eta``.
        """

    @abc.abstractmethod
    def write_grad_restore(
        self,
        params: TensorList,
        points: TensorList,
        backups: TensorList,
        grads: TensorList,
        coeffs: Tensor,
        *,
        eta: float | None = None,
    ) -> None:
        """``grads <- coeffs[0] * (points - backups) + coeffs[1] * grads``; ``params <- backups``.

        Used when the base optimizer has no fused update: it then steps from theta_0
        with the interpolated gradient G in ``.grad`` (the optimizer reads ``FOUND_INF``
        on the host first). With ``eta``: ``G = c_d q + c_g grads`` as above.
        """

    @abc.abstractmethod
    def sgd_update(
        self,
        params: TensorList,
        points: TensorList,
        backups: TensorList,
        grads: TensorList,
        bufs: TensorList | None,
        sc: Tensor,
        hyper: Tensor,
        *,
        weight_decay: bool,
        momentum: bool,
        nesterov: bool,
        maximize: bool,
        init_bufs: bool,
        eta: float | None = None,
    ) -> None:
        """Interpolate and step ``torch.optim.SGD`` from theta_0, in one pass.

        ``G = c_d (points - backups) + c_g grads`` (``c_d, c_g = sc[COEFFS]``; with ``eta``:
        ``c_d q + c_g grads``), negated if ``maximize``; with ``weight_decay``,
        ``G += wd * backups``; with ``momentum``, ``buf = G`` if ``init_bufs`` else
        ``buf = m buf + (1 - dampening) G``, then ``G = G + m buf`` (``nesterov``) or
        ``G = buf``; ``params = backups - lr G``. ``lr, wd, m, dampening`` are
        ``hyper[H_LR], hyper[H_WEIGHT_DECAY], hyper[H_MOMENTUM], hyper[H_DAMPENING]``
        (``1 - dampening`` formed in float64). ``bufs`` is None without ``momentum``.

        Where ``sc[FOUND_INF]`` is set: ``params = backups`` and ``bufs`` keep their values
        (with ``init_bufs`` they are set to 0).
        """

    @abc.abstractmethod
    def adam_update(
        self,
        params: TensorList,
        points: TensorList,
        backups: TensorList,
        grads: TensorList,
        exp_avgs: TensorList,
        exp_avg_sqs: TensorList,
        steps: Tensor,
        sc: Tensor,
        hyper: Tensor,
        *,
        weight_decay: bool,
        decoupled: bool,
        maximize: bool,
        eta: float | None = None,
    ) -> None:
        """Interpolate and step ``torch.optim.Adam``/``AdamW`` (amsgrad off) from theta_0.

        ``steps`` (a 1-d float tensor on the device, one entry per tensor) holds each
        tensor's step count, already advanced for this step. Per tensor, in float64
        (as torch computes them in Python): ``bias_correction1 = 1 - beta1**step``,
        ``step_size = lr / bias_correction1``, ``bias_correction2_sqrt =
        (1 - beta2**step) ** 0.5``. With ``G`` as in :meth:`sgd_update` (``eta`` included)
        and ``p = backups``: with ``weight_decay``, decoupled decay ``p *= 1 - lr wd``
        (factor formed in float64) or L2 ``G += wd p``;
        ``m = lerp(m, G, 1 - beta1)`` (torch's two formulas: ``m + w (G - m)`` for
        ``w < 0.5``, else ``G - (G - m)(1 - w)``); ``v = beta2 v + (1 - beta2) G^2``;
        ``params = p - step_size m / (sqrt(v) / bias_correction2_sqrt + eps)``.
        Hyper-parameters from ``hyper`` (``H_LR, H_BETA1, H_BETA2, H_ADAM_EPS,
        H_WEIGHT_DECAY``); ``1 - beta1`` and ``1 - beta2`` formed in float64.

        Where ``sc[FOUND_INF]`` is set: ``params = backups``; moments unchanged.
        """
