#!/usr/bin/env bash
# One prepared check of xsam-fast on a CUDA machine (written for an H200).
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh
#
# Assumes torch with CUDA and triton are installed. Sized to finish within one
# 10-minute call (the device tool's limit): the CUDA kernels are built for the
# visible GPU's architecture only, the tests are the GPU ones (the CPU suite,
# interpreter and compile checks included, runs in CI), and the benchmark caps
# each implementation's timing. Steps, each logged under $OUT:
#   1. versions, nvidia-smi                                   -> env.txt
#   2. pip install --no-build-isolation -e . (FORCE_CUDA=1, arch of GPU 0)
#                                                             -> install.log
#   3. pytest -q tests/test_gpu.py tests/test_cuda_backend.py -> pytest.log, pytest.xml
#   4. Triton checks: a whole XSAM step (nonfinite="none") under
#      torch.cuda.set_sync_debug_mode("error"), Triton launches and CUDA kernels
#      per step for 3 vs 62 vs 300 tensors                    -> triton_checks.txt
#   5. python -m benchmarks.bench_step --device cuda, resnet18 with every
#      implementation (torch.compile baseline included), then 125M and 1B
#      without it (fp32, bf16)                                -> bench.log, step_cuda_*.{csv,md,png}
# and prints a short summary table last. The exit status is non-zero if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-results/gpu_check_$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
declare -A RC

{
  date -u
  nvidia-smi || true
  python -c "import sys, torch, triton; print('python', sys.version.split()[0]); \
print('torch', torch.__version__, 'cuda', torch.version.cuda); print('triton', triton.__version__); \
print('device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"
} 2>&1 | tee "$OUT/env.txt"

echo "== install" | tee "$OUT/install.log"
ARCH=$(python -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0))" 2>/dev/null)
FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-${ARCH:-9.0}}" MAX_JOBS="${MAX_JOBS:-16}" \
  pip install --no-build-isolation -e . >>"$OUT/install.log" 2>&1; RC[install]=$?
python -c "import xsam_fast; print('backend_status', xsam_fast.backend_status())" 2>&1 \
  | tee -a "$OUT/install.log"

echo "== tests"
python -m pytest -q tests/test_gpu.py tests/test_cuda_backend.py -rs \
  --junitxml="$OUT/pytest.xml" 2>&1 | tee "$OUT/pytest.log"; RC[tests]=${PIPESTATUS[0]}

echo "== triton checks"
python - <<'EOF' 2>&1 | tee "$OUT/triton_checks.txt"; RC[checks]=${PIPESTATUS[0]}
import importlib, sys
import torch
from torch import nn
from xsam_fast import XSAM

assert torch.cuda.is_available(), "no CUDA device"
counter = {"n": 0}
for name in ("reductions", "perturb", "update"):
    module = importlib.import_module(f"xsam_fast.triton_kernels.{name}")
    for attr in vars(module).values():
        run = getattr(attr, "run", None)
        if run is not None and hasattr(attr, "fn") and hasattr(attr, "__getitem__"):
            def counted(*a, _run=run, **k):
                counter["n"] += 1
                return _run(*a, **k)
            attr.run = counted

failed = False
for n_tensors in (3, 62, 300):
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn((37 * i) % 5000 + 1, device="cuda")) for i in range(n_tensors)]
    opt = XSAM(params, torch.optim.SGD, rho=0.05, backend="triton", nonfinite="none",
               lr=0.1, momentum=0.9, weight_decay=5e-4)

    def closure():
        opt.zero_grad()
        loss = sum((p * p).sum() for p in params)
        loss.backward()
        return loss

    opt.step(closure)  # builds tables and momentum buffers
    torch.cuda.synchronize()
    before = counter["n"]
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step(closure)
        sync_ok = "no sync"
    except RuntimeError as exc:
        sync_ok, failed = f"SYNC: {exc}", True
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    launches = counter["n"] - before
    # every CUDA kernel of the optimizer part of a step (closure excluded by pre-computing grads)
    grads = [torch.randn_like(p) for p in params]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        opt.first_step()
        for p, g in zip(params, grads):
            p.grad.copy_(g)
        opt.second_step()
        torch.cuda.synchronize()
    kernels = sum(1 for e in prof.events() if e.device_type.name == "CUDA")
    print(f"tensors={n_tensors:4d}  triton_launches_per_step={launches}  "
          f"cuda_kernels_optimizer_only={kernels}  sync_debug_error_mode={sync_ok}")
print("launch counts must be equal for every number of tensors (triton: 6 per step with k=1: sumsq 2, ascent 1, final sums 2, update 1)")
sys.exit(1 if failed else 0)
EOF

echo "== benchmark"
# torch.compile's baseline compiles once per case (minutes for hundreds of tensors):
# timed on resnet18 only
BENCH=(--device cuda --repeat 30 --warmup 3 --budget-s 6 --out "$OUT")
python -m benchmarks.bench_step "${BENCH[@]}" --sizes resnet18 --dtypes fp32,bf16 \
  2>&1 | tee "$OUT/bench.log"; RC[bench]=${PIPESTATUS[0]}
python -m benchmarks.bench_step "${BENCH[@]}" --sizes 125M,1B --dtypes fp32,bf16 \
  --backends triton,cuda,reference,authors-style,foreach 2>&1 | tee -a "$OUT/bench.log"
[ "${PIPESTATUS[0]}" = 0 ] || RC[bench]=1

echo
echo "================ summary ($OUT) ================"
printf '%-10s %s\n' step "exit status"
for step in install tests checks bench; do printf '%-10s %s\n' "$step" "${RC[$step]}"; done
echo "-- tests:  $(tail -n 1 "$OUT/pytest.log")"
grep -E '^tensors=' "$OUT/triton_checks.txt" | sed 's/^/-- /'
for md in $(ls -tr "$OUT"/step_cuda_*.md 2>/dev/null); do echo "-- benchmark ($md):"; cat "$md"; done
status=0
for step in install tests checks bench; do [ "${RC[$step]}" = 0 ] || status=1; done
exit $status
