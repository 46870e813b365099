"""Fused Triton kernels of XSAM, installed as ``xsam_fast.triton_kernels``.

One module per concern: :mod:`.config` (block sizes, launch options),
:mod:`.packing` (packed tensor lists: device pointer tables and work lists,
cached), :mod:`.common` (device helpers of the multi-tensor kernels),
:mod:`.scalars` (the step's float64 scalar math), :mod:`.reductions`,
:mod:`.perturb`, :mod:`.sgd` and :mod:`.adam` (kernels next to their launchers). Importing
this package imports Triton; ``TRITON_INTERPRET`` must be set before the first
import of a kernel module.
"""
