"""Benchmark harness of xsam-fast (not part of the installed package).

Run from the repository root: ``python -m benchmarks.bench_step --help`` (the step
against the bandwidth floor; ``--host-overhead`` for the host time per step),
``python -m benchmarks.search_eval``, ``python -m benchmarks.interval_tradeoff``,
``bash benchmarks/gpu_check.sh`` (one prepared GPU check; ``--dry-run`` on a CPU).
Outputs go under ``results/`` of the current directory.

Shared modules: :mod:`.shapes` (parameter sets), :mod:`.timing` (timers,
percentiles, bandwidth probes), :mod:`.machine` (what ran where), :mod:`.report`
(CSV, tables, plots), :mod:`.impls` (what is timed) with :mod:`.baselines` (the
XSAM baselines), :mod:`.triton_launches` (Triton launch counting).
"""
