"""What is particular to the CUDA backend; the contract itself is ``test_backend_contract.py``.

Every test runs on two targets where it can:

* ``emulated``: the backend's host and kernel code compiled as host code and run on CPU
  tensors (``cuda_emulation.py``), on an emulated GPU of a few multiprocessors;
* ``cuda``: the extension ``xsam_fast._C_cuda`` on a GPU (skipped here, with the reason).

Checked: one launch per phase (two for a reduction) whatever the number of tensors or
chunks, the work table (every element once, shared by lists packed alike), the grid
(min(items, blocks per SM * SMs)), reductions that do not depend on the grid, phases
refusing lists that do not line up and malformed scalar tensors, and on a GPU only: sums
and updates bit-identical to the emulation, a phase on another stream than the packing,
CUDA-graph replay with changed device scalars and hyper-parameters, the device guard.
"""

from __future__ import annotations

import math

import pytest
import torch

import cuda_emulation
from backend_contract import (
    ADAM_CASES,
    REFERENCE,
    SGD_CASES,
    adam_hyper,
    assert_case_matches,
    clone_case,
    make_case,
    make_sc,
    sgd_hyper,
)
from xsam_fast import backends
from xsam_fast.backends import base as B
from xsam_fast.backends.packed import LayoutError, TensorList

CHUNK = 16384
IDS = {torch.float64: "fp64", torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


class Target:
    """A backend under test and where its tensors live."""

    def __init__(self, backend, device: str) -> None:
        self.backend, self.device = backend, device

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()


def _cuda_target() -> Target:
    why = backends.backend_status()["cuda"]
    if why:
        pytest.skip(f"cuda backend unavailable here: {why}")
    from xsam_fast.backends.cuda import CudaBackend

    return Target(CudaBackend(), "cuda")


def _emulated_target() -> Target:
    why = cuda_emulation.unavailable()
    if why:
        pytest.skip(why)
    backend = cuda_emulation.EmulatedCudaBackend()
    backend.set_device()
    return Target(backend, "cpu")


@pytest.fixture(params=["emulated", "cuda"])
def target(request) -> Target:
    target = _emulated_target() if request.param == "emulated" else _cuda_target()
    yield target
    if request.param == "emulated":
        target.backend.set_device()


@pytest.fixture
def emulated() -> Target:
    target = _emulated_target()
    yield target
    target.backend.set_device()


@pytest.fixture
def gpu() -> Target:
    return _cuda_target()


def _sizes(n: int) -> list[int]:
    """``n`` tensor sizes, small and odd, one of several chunks."""
    return [(37 * i) % 301 + 1 for i in range(n - 1)] + [3 * CHUNK + 5]


def _launches(target: Target, fn) -> int:
    before = target.backend.launch_count()
    fn()
    return target.backend.launch_count() - before


def _every_phase(target: Target, case: dict, sc: torch.Tensor) -> dict[str, int]:
    """Launches of each phase on ``case`` (mutated)."""
    be = target.backend
    p = be.pack(case["params"])
    x, b, g, m, v = (be.pack(case[k], like=p) for k in ("points", "backups", "grads", "bufs", "sq"))
    hyper = sgd_hyper(SGD_CASES["momentum-wd"], target.device)
    adam = adam_hyper(ADAM_CASES["adamw"], target.device)
    steps = torch.full((len(p),), 3.0, device=target.device)
    coeffs = sc[B.COEFFS].clone()
    return {
        "sumsq": _launches(
            target, lambda: be.sumsq(g, sc[B.SUMSQ : B.SUMSQ + 1], accumulate=False)
        ),
        "final_sums": _launches(
            target, lambda: be.final_sums(x, b, g, sc[B.SUMS], accumulate=True)
        ),
        "ascent_scalars": _launches(target, lambda: be.ascent_scalars(sc, first=True, check=True)),
        "update_scalars": _launches(target, lambda: be.update_scalars(sc, check=True)),
        "plain_scalars": _launches(target, lambda: be.plain_scalars(sc, check=True)),
        "backup_ascent": _launches(
            target, lambda: be.backup_ascent(p, g, b, sc, hyper, backup=True, eta=0.05)
        ),
        "write_point": _launches(target, lambda: be.write_point(x, p, b, g, coeffs)),
        "write_grad_restore": _launches(target, lambda: be.write_grad_restore(p, p, b, g, coeffs)),
        "sgd_update": _launches(
            target,
            lambda: be.sgd_update(
                p,
                p,
                b,
                g,
                m,
                sc,
                hyper,
                weight_decay=True,
                momentum=True,
                nesterov=True,
                maximize=False,
                init_bufs=False,
            ),
        ),
        "adam_update": _launches(
            target,
            lambda: be.adam_update(
                p, p, b, g, m, v, steps, sc, adam, weight_decay=True, decoupled=True, maximize=False
            ),
        ),
    }


# ------------------------------------------------------------------ constants
def test_constants_agree_with_the_contract(target):
    """sc and hyper indices of csrc/common/step_scalars.h are base.py's; CHUNK is this file's."""
    if target.device == "cuda":
        from xsam_fast import _C_cuda

        cpp = {"CHUNK": _C_cuda.CHUNK, "NSCALARS": _C_cuda.NSCALARS, "NHYPER": _C_cuda.NHYPER}
    else:
        cpp = cuda_emulation.constants()
    assert cpp.pop("CHUNK") == CHUNK
    cpp.pop("THREADS", None)
    wrong = {
        name: (value, getattr(B, name)) for name, value in cpp.items() if getattr(B, name) != value
    }
    assert not wrong, f"C++ value vs base.py: {wrong}"
    if target.device == "cpu":  # the emulation lists every index: none missing in C++
        indices = {n for n in dir(B) if n.isupper() and isinstance(getattr(B, n), int)}
        assert set(cpp) == indices


# ------------------------------------------------------------------ launches
@pytest.mark.parametrize("ntensors", [3, 62, 300], ids=lambda n: f"{n}-tensors")
def test_one_launch_per_phase_whatever_the_tensor_count(target, ntensors):
    case = make_case(torch.float32, _sizes(ntensors), seed=ntensors, device=target.device)
    launches = _every_phase(target, case, make_sc(target.device))
    reductions = {"sumsq", "final_sums"}
    assert launches == {k: 2 if k in reductions else 1 for k in launches}, launches


def test_many_tensors_and_chunks_step_every_element(target):
    """300 tensors, one of them 40 chunks long: one launch each, as the reference."""
    sizes = _sizes(299) + [40 * CHUNK + 123]
    case = make_case(torch.float32, sizes, seed=5, device=target.device)
    want, got = clone_case(case), clone_case(case)
    sc_want, sc_got = make_sc(target.device), make_sc(target.device)
    hyper = sgd_hyper(SGD_CASES["plain"], target.device)
    for be, c, sc in ((REFERENCE, want, sc_want), (target.backend, got, sc_got)):
        p = be.pack(c["params"])
        g, b = be.pack(c["grads"], like=p), be.pack(c["backups"], like=p)
        be.sumsq(g, sc[B.SUMSQ : B.SUMSQ + 1], accumulate=False)
        be.backup_ascent(p, g, b, sc, hyper, backup=True)
    assert_case_matches(got, want)
    assert math.isclose(sc_got[B.SUMSQ].item(), sc_want[B.SUMSQ].item(), rel_tol=1e-5)


# ------------------------------------------------------------------ the work table
def test_work_items_cover_every_element_once(emulated):
    be = emulated.backend
    sizes = [0, 1, CHUNK - 1, CHUNK, 0, CHUNK + 1, 3 * CHUNK + 5, 7]
    packed = be.pack([torch.zeros(n) for n in sizes])
    items = be.items(packed)
    covered = {t: [] for t in range(len(sizes))}
    for start, tensor, length in items:
        assert start % CHUNK == 0 and 0 < length <= CHUNK
        covered[tensor].append((start, length))
    for t, n in enumerate(sizes):
        spans = covered[t]
        assert [s for s, _ in spans] == list(range(0, n, CHUNK)), f"tensor {t}"
        assert sum(length for _, length in spans) == n, f"tensor {t}"
    assert [i[1] for i in items] == sorted(i[1] for i in items), "items not tensor by tensor"


def test_lists_packed_alike_share_one_work_table(target):
    be = target.backend
    tensors = [torch.zeros(n, device=target.device) for n in (5, CHUNK + 3)]
    a = be.pack(tensors)
    b = be.pack([t.clone() for t in tensors], like=a)
    c = be.pack([t.clone() for t in tensors])
    if target.device == "cuda":
        assert a.packed.shares_work_table(b.packed) and not a.packed.shares_work_table(c.packed)
        assert a.packed.num_items == 3
    else:
        assert be.shares_layout(a, b) and not be.shares_layout(a, c)
    # lists packed apart with the same layout still step together
    sc = make_sc(target.device)
    be.sumsq(a, sc[B.SUMSQ : B.SUMSQ + 1], accumulate=False, weights=c, eta=0.1)


# ------------------------------------------------------------------ the grid
def test_emulated_grid_is_min_of_items_and_resident_blocks(emulated):
    be = emulated.backend
    sc = make_sc()
    for sms, per_sm, sizes, grid in [
        (3, 2, [5], 1),
        (3, 2, [5, CHUNK + 1], 3),
        (3, 2, [20 * CHUNK], 6),
        (132, 4, [20 * CHUNK], 20),
        (1, 1, [20 * CHUNK], 1),
    ]:
        be.set_device(sms, per_sm)
        packed = be.pack([torch.ones(n) for n in sizes])
        be.sumsq(packed, sc[B.SUMSQ : B.SUMSQ + 1], accumulate=False)
        assert be.last_grid() == grid, (sms, per_sm, sizes)


def test_gpu_grid_fills_the_multiprocessors(gpu):
    from xsam_fast import _C_cuda

    sms = _C_cuda.sm_count(torch.cuda.current_device())
    be = gpu.backend
    sc = make_sc("cuda")
    for nitems in (1, sms, 16 * sms):
        packed = be.pack([torch.ones(nitems * CHUNK, device="cuda", dtype=torch.bfloat16)])
        be.sumsq(packed, sc[B.SUMSQ : B.SUMSQ + 1], accumulate=False)
        grid = be.last_grid()
        if nitems <= sms:
            assert grid == nitems
        else:  # 1 to 4 resident blocks of 512 threads per multiprocessor
            assert grid % sms == 0 and sms <= grid <= 4 * sms, (grid, sms)
    torch.cuda.synchronize()
    assert sc[B.SUMSQ].item() == 16 * sms * CHUNK


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=IDS.get)
def test_sums_do_not_depend_on_the_grid(emulated, dtype):
    """One partial per work item, added in a fixed order: bit-identical on any GPU size."""
    be = emulated.backend
    case = make_case(dtype, _sizes(40) + [9 * CHUNK + 7], seed=11)
    results = []
    for sms, per_sm in ((1, 1), (3, 2), (5, 1), (132, 4)):
        be.set_device(sms, per_sm)
        sc = make_sc()
        p = be.pack(case["points"])
        b, g = be.pack(case["backups"], like=p), be.pack(case["grads"], like=p)
        be.sumsq(g, sc[B.SUMSQ : B.SUMSQ + 1], accumulate=False, weights=b, eta=0.05)
        be.final_sums(p, b, g, sc[B.SUMS], accumulate=False)
        results.append(sc)
    assert all(torch.equal(r, results[0]) for r in results[1:])


# ------------------------------------------------------------------ misuse is loud
def test_phases_refuse_lists_that_do_not_line_up(target):
    """Lists packed apart must agree tensor by tensor (LayoutError, nothing written)."""
    be = target.backend
    dev = target.device
    sc = make_sc(dev)
    hyper = sgd_hyper(SGD_CASES["plain"], dev)
    p = be.pack([torch.zeros(4, 3, device=dev), torch.zeros(5, device=dev)])
    others = {
        "strides": [torch.ones(3, 4, device=dev).t(), torch.ones(5, device=dev)],
        "shapes": [torch.ones(12, device=dev), torch.ones(5, device=dev)],
        "dtype": [
            torch.ones(4, 3, device=dev, dtype=torch.float64),
            torch.ones(5, device=dev, dtype=torch.float64),
        ],
        "length": [torch.ones(4, 3, device=dev)],
    }
    for what, tensors in others.items():
        with pytest.raises(LayoutError):
            be.backup_ascent(p, be.pack(tensors), p, sc, hyper, backup=False)
        assert not any(t.any() for t in p), f"{what}: a refused call wrote"
    with pytest.raises(LayoutError):  # a list this backend did not pack
        be.backup_ascent(p, TensorList(others["strides"]), p, sc, hyper, backup=False)


def test_phases_refuse_malformed_scalar_tensors(target):
    be = target.backend
    dev = target.device
    p = be.pack([torch.zeros(7, device=dev)])
    g = be.pack([torch.ones(7, device=dev)], like=p)
    sc = make_sc(dev)
    hyper = sgd_hyper(SGD_CASES["plain"], dev)
    with pytest.raises(ValueError):
        be.backup_ascent(p, g, p, sc.float(), hyper, backup=False)
    with pytest.raises(ValueError):
        be.backup_ascent(p, g, p, sc, hyper[:3], backup=False)
    with pytest.raises(ValueError):
        be.sumsq(g, sc[B.SUMS], accumulate=False)
    with pytest.raises(ValueError):
        be.sumsq(g, sc[B.SUMSQ : B.SUMSQ + 1], accumulate=False, weights=p, eta=0.0)
    with pytest.raises(ValueError):
        be.sumsq(g, sc[B.SUMSQ : B.SUMSQ + 1], accumulate=False, eta=0.1)
    with pytest.raises(ValueError):
        be.adam_update(
            p,
            p,
            p,
            g,
            g,
            g,
            torch.ones(2, device=dev),
            sc,
            adam_hyper(ADAM_CASES["adamw"], dev),
            weight_decay=False,
            decoupled=True,
            maximize=False,
        )
    with pytest.raises(ValueError):
        be.sgd_update(
            p,
            p,
            p,
            g,
            None,
            sc,
            hyper,
            weight_decay=False,
            momentum=True,
            nesterov=False,
            maximize=False,
            init_bufs=False,
        )
    assert torch.equal(p[0], torch.zeros(7, device=dev)), "a refused call wrote"


# ------------------------------------------------------------------ GPU only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=IDS.get)
@pytest.mark.parametrize("eta", [None, 0.05], ids=["plain", "asam"])
def test_gpu_is_bit_identical_to_the_emulation(gpu, dtype, eta):
    """Same items, same order of additions, one rounding per operation (-fmad=false):
    the emulation predicts the GPU's bits (sums, and SGD updates with sc's coefficients;
    not update_scalars, whose acos/sin may differ from the host's by an ulp)."""
    emu = _emulated_target().backend
    case = make_case(dtype, _sizes(20) + [5 * CHUNK + 3], seed=21)
    results = []
    for be, dev in ((emu, "cpu"), (gpu.backend, "cuda")):
        c = {k: [t.to(dev) for t in v] for k, v in clone_case(case).items()}
        sc = make_sc(dev)
        p = be.pack(c["params"])
        x, b, g, m = (be.pack(c[k], like=p) for k in ("points", "backups", "grads", "bufs"))
        be.sumsq(g, sc[B.SUMSQ : B.SUMSQ + 1], accumulate=False, weights=b, eta=eta)
        be.final_sums(x, b, g, sc[B.SUMS], accumulate=False, eta=eta)
        be.sgd_update(
            p,
            x,
            b,
            g,
            m,
            sc,
            sgd_hyper(SGD_CASES["nesterov-dampening"], dev),
            weight_decay=True,
            momentum=True,
            nesterov=True,
            maximize=False,
            init_bufs=False,
            eta=eta,
        )
        results.append((sc.cpu(), [t.cpu() for t in c["params"] + c["bufs"]]))
    (sc_emu, t_emu), (sc_gpu, t_gpu) = results
    for k in (B.SUMSQ, B.GG, B.DD, B.DG):
        assert sc_gpu[k].item() == sc_emu[k].item(), f"sc[{k}]"
    for i, (a, e) in enumerate(zip(t_gpu, t_emu)):
        assert torch.equal(a, e), (
            f"tensor {i}: first differing element at {int((a != e).flatten().nonzero()[0])}"
        )


def test_gpu_phase_on_another_stream_than_the_packing(gpu):
    be = gpu.backend
    case = make_case(torch.float32, _sizes(30), seed=31, device="cuda")
    want = clone_case(case)
    sc, sc_want = make_sc("cuda"), make_sc("cuda")
    hyper = sgd_hyper(SGD_CASES["plain"], "cuda")
    p = be.pack(case["params"])
    g, b = be.pack(case["grads"], like=p), be.pack(case["backups"], like=p)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        be.sumsq(g, sc[B.SUMSQ : B.SUMSQ + 1], accumulate=False)
        be.backup_ascent(p, g, b, sc, hyper, backup=True)
    torch.cuda.current_stream().wait_stream(side)
    rp = REFERENCE.pack(want["params"])
    rg, rb = REFERENCE.pack(want["grads"]), REFERENCE.pack(want["backups"])
    REFERENCE.sumsq(rg, sc_want[B.SUMSQ : B.SUMSQ + 1], accumulate=False)
    REFERENCE.backup_ascent(rp, rg, rb, sc_want, hyper, backup=True)
    assert_case_matches(case, want)


def test_gpu_graph_replay_reads_scalars_and_hyper_from_the_device(gpu):
    """A captured ascent follows a changed gradient, radius and skip flag at replay."""
    be = gpu.backend
    params = [torch.randn(n, device="cuda") for n in _sizes(12)]
    grads = [torch.randn_like(t) for t in params]
    backups = [torch.empty_like(t) for t in params]
    sc = make_sc("cuda")
    hyper = sgd_hyper(SGD_CASES["plain"], "cuda")
    p = be.pack(params)
    g, b = be.pack(grads, like=p), be.pack(backups, like=p)

    def ascent():
        be.sumsq(g, sc[B.SUMSQ : B.SUMSQ + 1], accumulate=False)
        be.ascent_scalars(sc, first=True, check=True)
        be.backup_ascent(p, g, b, sc, hyper, backup=True)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        ascent()  # warm-up: occupancy queries, lazy module loading
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ascent()
    for radius, scale_grads in ((0.3, 1.0), (0.05, -2.0), (0.1, math.inf)):
        start = [t.clone() for t in params]
        for t in grads:
            t.mul_(scale_grads)
        hyper[B.H_RADIUS] = radius
        graph.replay()
        torch.cuda.synchronize()
        norm = math.sqrt(sum(float((t.double() ** 2).sum()) for t in grads))
        for t, t0, gr in zip(params, start, grads):
            if math.isfinite(norm):
                want = t0 + (radius / (norm + sc[B.EPS].item())) * gr
                torch.testing.assert_close(t, want, rtol=1e-5, atol=1e-6)
            else:  # the skip flag is set on the device: nothing moves
                assert torch.equal(t, t0)
        for t, t0 in zip(backups, start):
            assert torch.equal(t, t0)


def test_gpu_device_guard(gpu):
    """Tensors on cuda:1 while cuda:0 is current: the launch goes to their device."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    be = gpu.backend
    case = make_case(torch.float32, _sizes(5), seed=41, device="cuda:1")
    sc = make_sc("cuda:1")
    with torch.cuda.device(0):
        p = be.pack(case["grads"])
        be.sumsq(p, sc[B.SUMSQ : B.SUMSQ + 1], accumulate=False)
    want = sum(float((t.double() ** 2).sum()) for t in case["grads"])
    assert math.isclose(sc[B.SUMSQ].item(), want, rel_tol=1e-5)
