"""torch.distributed.checkpoint (DCP) round trips of XSAM in one process.

``get_optimizer_state_dict`` on a fresh optimizer calls ``step()`` without a closure
(with every learning rate 0) to create the state it loads into; XSAM's own state
(alpha, counters, pending search request, recent searches) travels in a param group,
which DCP keeps. The resumed run, in a fresh process, must be bit-identical to the
uninterrupted one: parameters, alpha, the ``interval`` phase and the next search.
(The same with FSDP2 on two processes: ``test_distributed.py``.)
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import dcp_resume

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize("base", list(dcp_resume.BASES))
def test_dcp_resume_in_a_fresh_process_is_bit_identical(base, tmp_path):
    ckpt = str(tmp_path / "ckpt")
    uninterrupted = dcp_resume.run("save", ckpt, base)
    out = str(tmp_path / "resumed.pt")
    subprocess.run(
        [sys.executable, os.path.join(HERE, "dcp_resume.py"), "load", ckpt, out, base],
        check=True,
        cwd=HERE,
        timeout=300,
    )
    resumed = torch.load(out)
    for a, b in zip(resumed["params"], uninterrupted["params"]):
        assert torch.equal(a, b)
    for key in ("alpha", "step_count", "base_steps", "searches"):
        assert resumed[key] == uninterrupted[key], key
    # XSAM steps at calls 0, 3, 6, 9; searches requested at calls 0, 4 (a plain step: still
    # pending at the save after call 4) and 8: done by XSAM steps 0, 2 and 3
    assert resumed["searches"] == [0, 2, 3]


def test_fresh_optimizer_state_is_created_without_moving_anything():
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    model = dcp_resume.make_model()
    opt = dcp_resume.build(model, "adamw")
    before = [p.detach().clone() for p in model.parameters()]
    osd = get_optimizer_state_dict(model, opt)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert all(set(s) >= {"exp_avg", "exp_avg_sq", "step"} for s in osd["state"].values())
    assert "xsam" in osd["param_groups"][0]
    assert all(p.grad is None for p in model.parameters())
