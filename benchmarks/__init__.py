"""Benchmark harness of xsam-fast (not part of the installed package).

``python -m benchmarks.bench_step --help``; the baseline optimizers it compares
against live in :mod:`benchmarks.baselines`.
"""
