"""The contract every XSAM backend implements: one call per phase per bucket.

A *bucket* is a list of tensors that share one device and one dtype (the
optimizer splits param groups into buckets). Every list argument of a call has
the same length and lines up element by element. Tensors are contiguous.

Math runs in :func:`xsam_fast.coefficients.accumulation_dtype` of the bucket
(float32 for float32/bfloat16/float16, float64 for float64) and 16-bit results
are rounded to nearest even once, when stored. Scalar tensors (``scale``,
``coeffs``) are on the bucket's device in that accumulation dtype; plain Python
floats are hyper-parameters. No method may synchronise with the host.

Reductions must be deterministic: the same inputs give bit-identical sums
whatever the number of threads or blocks.

Names: ``params`` are written in place; ``points`` hold the ascent point
(``params`` itself, except during an alpha search, when it is a saved copy);
``backups`` hold theta_0; ``grads`` hold g (read only unless said otherwise).

Adaptive (ASAM) geometry: every phase takes a keyword ``eta: float | None``.
``None`` (the default) is plain XSAM, exactly the formulas below. A float
``eta > 0`` makes the phase work in the rescaled space ``u = w / T`` with the
elementwise ``T = |theta_0| + eta``, computed on the fly from theta_0 (the
``backups``, or the ``weights`` given to :meth:`Backend.sumsq`; no stored T).
With ``d = points - backups`` the adaptive forms are, elementwise::

    sumsq        sum (T g)^2                                  (= ||g_u||^2)
    ascent       params += scale * (T*T * g)
    final_sums   [sum (T g)^2, sum (d / T)^2, sum d g]        (= ||g_u||^2, ||d_u||^2, <d_u, g_u>)
    point        backups + (c_d d + c_g (T*T * g))            (search point)
    G            c_d (d / (T*T)) + c_g g                       (update direction, for
                                                               write_grad_restore, sgd, adam)

computed in this order (``t = |theta_0| + eta``; ``t*t`` once; one rounding per
operation) so that backends agree with the reference to the usual tolerances.
``eta`` is a Python float; the math uses it in the accumulation dtype.
"""
from __future__ import annotations

import abc
from typing import Sequence

import torch
from torch import Tensor

Tensors = Sequence[Tensor]


class Backend(abc.ABC):
    """One implementation of the fused XSAM phases."""

    #: name accepted by ``XSAM(backend=...)``
    name: str = ""

    @classmethod
    @abc.abstractmethod
    def is_available(cls) -> tuple[bool, str]:
        """``(True, "")`` when the backend runs here, else ``(False, why)``."""

    @abc.abstractmethod
    def supports(self, device: torch.device, dtype: torch.dtype) -> bool:
        """Whether buckets on ``device`` with ``dtype`` can be handled."""

    @abc.abstractmethod
    def sumsq(self, tensors: Tensors, *, weights: Tensors | None = None,
              eta: float | None = None) -> Tensor:
        """``sum_i ||tensors[i]||^2`` as a 0-d tensor (accumulation dtype); 0 for [].

        With ``eta``: ``sum_i ||(|weights[i]| + eta) * tensors[i]||^2`` (``weights``,
        same shapes as ``tensors``, hold theta_0: the params at the first ascent, when
        the backups are written in the same pass, the backups afterwards). ``weights``
        is required with ``eta`` and ignored without it.
        """

    @abc.abstractmethod
    def backup_ascent(
        self, params: Tensors, grads: Tensors, backups: Tensors, scale: Tensor, backup: bool,
        *, eta: float | None = None
    ) -> None:
        """``backups <- params`` (only if ``backup``), then ``params += scale * grads``.

        With ``eta``: ``params += scale * (T*T * grads)``, ``T = |theta_0| + eta`` where
        theta_0 is the params before this pass if ``backup`` (they are theta_0 then),
        else the ``backups`` (which are then read).
        """

    @abc.abstractmethod
    def final_sums(self, points: Tensors, backups: Tensors, grads: Tensors, *,
                   eta: float | None = None) -> Tensor:
        """One pass: ``[||g||^2, ||d||^2, <d, g>]`` (shape (3,)), ``d = points - backups``.

        With ``eta``: ``[sum (T g)^2, sum (d / T)^2, sum d g]``, ``T = |backups| + eta``.
        """

    @abc.abstractmethod
    def write_point(
        self, out: Tensors, points: Tensors, backups: Tensors, grads: Tensors, coeffs: Tensor,
        *, eta: float | None = None
    ) -> None:
        """``out = backups + coeffs[0] * (points - backups) + coeffs[1] * grads``.

        With ``eta``: ``out = backups + (c_d d + c_g (T*T * grads))``, ``T = |backups| + eta``.
        """

    @abc.abstractmethod
    def write_grad_restore(
        self, params: Tensors, points: Tensors, backups: Tensors, grads: Tensors, coeffs: Tensor,
        *, eta: float | None = None
    ) -> None:
        """``grads <- coeffs[0] * (points - backups) + coeffs[1] * grads``; ``params <- backups``.

        Used when the base optimizer has no fused update: it then steps from theta_0
        with the interpolated gradient G in ``.grad``. With ``eta``:
        ``G = c_d (d / (T*T)) + c_g grads``, ``T = |backups| + eta``.
        """

    @abc.abstractmethod
    def sgd_update(
        self,
        params: Tensors,
        points: Tensors,
        backups: Tensors,
        grads: Tensors,
        bufs: Tensors,
        coeffs: Tensor,
        *,
        lr: float,
        weight_decay: float,
        momentum: float,
        dampening: float,
        nesterov: bool,
        maximize: bool,
        init_bufs: bool,
        eta: float | None = None,
    ) -> None:
        """Interpolate and step ``torch.optim.SGD`` from theta_0, in one pass.

        ``G = c_d (points - backups) + c_g grads`` (with ``eta``:
        ``c_d (d / (T*T)) + c_g grads``, ``T = |backups| + eta``), negated if ``maximize``;
        ``G += weight_decay * backups``; with momentum, ``buf = G`` if
        ``init_bufs`` else ``buf = momentum buf + (1 - dampening) G``, then
        ``G = G + momentum buf`` (Nesterov) or ``G = buf``;
        ``params = backups - lr G``. ``bufs`` is empty when ``momentum == 0``.
        """

    @abc.abstractmethod
    def adam_update(
        self,
        params: Tensors,
        points: Tensors,
        backups: Tensors,
        grads: Tensors,
        exp_avgs: Tensors,
        exp_avg_sqs: Tensors,
        coeffs: Tensor,
        *,
        lr: float,
        beta1: float,
        beta2: float,
        eps: float,
        weight_decay: float,
        decoupled: bool,
        maximize: bool,
        step_size: float,
        bias_correction2_sqrt: float,
        eta: float | None = None,
    ) -> None:
        """Interpolate and step ``torch.optim.Adam``/``AdamW`` (amsgrad off) from theta_0.

        With ``G`` as in :meth:`sgd_update` (``eta`` included) and ``p = backups``: decoupled decay
        ``p *= 1 - lr wd`` or L2 ``G += wd p``; ``m = lerp(m, G, 1 - beta1)``;
        ``v = beta2 v + (1 - beta2) G^2``;
        ``params = p - step_size m / (sqrt(v) / bias_correction2_sqrt + eps)``.
        """
