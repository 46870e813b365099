"""Fused Triton kernels of XSAM, installed as ``xsam_fast.triton_kernels``."""
