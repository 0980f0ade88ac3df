"""Mixed precision: bf16 autocast under Accelerate, fp16 autocast with torch's GradScaler."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import DEVICES
from hf_models import gpt2
from gen_optim import GeNAdamW, group_parameters, replay_closure

HERE = Path(__file__).parent


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", ["full", "training"])
def test_accelerate_bf16(tmp_path, precision, device):
    """Full precision (the default) reaches past Accelerate's autocast wrapper of forward."""
    out = tmp_path / "result.json"
    env = dict(os.environ, ACCELERATE_MIXED_PRECISION="bf16", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(HERE / "amp_train.py"), str(out), precision, device], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["mixed_precision"] == "bf16" and result["device"] == device
    probes = "torch.float32" if precision == "full" else "torch.bfloat16"
    assert result["dtypes"] == {"training": ["torch.bfloat16"], "probe": [probes]}
    # all 12 steps are warm-up (the moments' 10 steps, then warmup=10) and probe
    assert result["rounds"] == 12 and result["rates_finite"]
    assert any(r is None for r in result["reasons"])  # accepted fits


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", ["full", "training"])
def test_fp16_grad_scaler_skips_the_probe_round_of_a_skipped_step(precision, device):
    model = gpt2().to(device)
    closure = replay_closure(model, precision=precision)
    opt = GeNAdamW(group_parameters(model), closure, lr=3e-3, probe_every=2, warmup=0)  # every 2nd step
    scaler = torch.amp.GradScaler(device, init_scale=2.0**10)  # no overflow but the one made at step 4
    probe_dtypes = set()
    model.transformer.h[0].mlp.c_fc.register_forward_hook(
        lambda m, a, out: probe_dtypes.add(out.dtype) if closure.replaying else None)
    g = torch.Generator().manual_seed(0)
    for step in range(6):
        ids = torch.randint(0, 100, (4, 16), generator=g).to(device)
        opt.zero_grad()
        with torch.autocast(device, dtype=torch.float16):
            loss = model(input_ids=ids, labels=ids).loss
        scaler.scale(loss).backward()
        if step == 4:  # an overflow: the scaler skips opt.step()
            model.transformer.wte.weight.grad[0, 0] = float("inf")
            rates = [grp["gen_lr"] for grp in opt.param_groups]
        scaler.step(opt)
        scaler.update()
        if step == 4:
            assert opt.state["gen"]["step"] == 4 and [grp["gen_lr"] for grp in opt.param_groups] == rates
    assert probe_dtypes == {torch.float32 if precision == "full" else torch.float16}
    assert [r["step"] for r in opt.history] == [0, 2, 4]  # the step skipped at 4 ran at 5, a probe step
    assert all(torch.isfinite(torch.tensor(grp["gen_lr"])) and grp["gen_lr"] > 0 for grp in opt.param_groups)
    assert opt.state["gen"]["step"] == 5


def test_replay_precision_is_checked():
    with pytest.raises(ValueError, match="precision"):
        replay_closure(gpt2(), precision="bf16")
