"""AdaPEFTCallback through the HF Trainer: single process, resumed from a checkpoint, and DDP."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gen_optim import Mask
from gen_optim.trainer import AdaPEFTCallback

HERE = Path(__file__).parent


def launch(out, *extra, processes=1):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("ACCELERATE_MIXED_PRECISION", None)
    script = [str(HERE / "trainer_run.py"), str(out), *extra]
    cmd = [sys.executable, *script] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), *script]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def run(out, *extra, processes=1):
    """The runs' results, one per rank."""
    proc = launch(out, *extra, processes=processes)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return [json.loads((out / f"result-{rank}.json").read_text()) for rank in range(processes)]


def check_frozen(result, out):
    mask = Mask.load(out / "mask.json")
    assert result["mask"] == list(mask.active) and mask.active and mask.fraction <= 0.3
    trainable = [n for n, t in result["trainable"].items() if t]
    frozen = [n for n, t in result["trainable"].items() if not t]
    assert trainable and frozen
    assert not any(result["grads"][n] for n in frozen)  # frozen groups computed no gradient
    assert {"gen/appi/head", "gen/lr/others"} <= set(result["log_keys"]) & set(result["reported_keys"])


def test_selects_freezes_logs_and_resumes(tmp_path):
    straight = run(tmp_path / "straight")[0]
    check_frozen(straight, tmp_path / "straight")
    # warm-up (the moments' 10 steps, then warmup=2), then every 2nd step: the selection keeps probing
    assert straight["rounds"] == 12 + 4
    resumed = run(tmp_path / "resumed", "--resume", str(tmp_path / "straight" / "checkpoint-8"))[0]
    assert resumed["mask"] == straight["mask"] and resumed["trainable"] == straight["trainable"]
    assert resumed["appi"] == pytest.approx(straight["appi"], rel=1e-6)
    assert resumed["weights"] == pytest.approx(straight["weights"], rel=1e-5)


def test_ddp_two_processes_and_resume(tmp_path):
    results = run(tmp_path / "straight", processes=2)
    assert [r["parallel_mode"] for r in results] == ["ParallelMode.DISTRIBUTED"] * 2
    assert results[0]["world_size"] == 2
    for r in results:
        check_frozen(r, tmp_path / "straight")
    assert results[0]["weights"] == results[1]["weights"] and results[0]["appi"] == results[1]["appi"]
    resumed = run(tmp_path / "resumed", "--resume", str(tmp_path / "straight" / "checkpoint-8"), processes=2)
    for r in resumed:
        assert r["mask"] == results[0]["mask"] and r["trainable"] == results[0]["trainable"]
        assert r["appi"] == pytest.approx(results[0]["appi"], rel=1e-6)
        assert r["weights"] == pytest.approx(results[0]["weights"], rel=1e-5)


def test_ddp_without_find_unused_parameters_says_what_to_set(tmp_path):
    proc = launch(tmp_path, "--no_find_unused", processes=2)
    assert proc.returncode != 0 and "ddp_find_unused_parameters=True" in proc.stderr


def test_bad_arguments():
    import torch

    from gen_optim.trainer import gen_optimizer

    with pytest.raises(TypeError, match="GeNAdamW"):
        gen_optimizer(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))]))
    with pytest.raises(ValueError, match="select_at"):
        AdaPEFTCallback(eps=0.1, select_at=1.5)
    with pytest.raises(ValueError, match="method"):
        AdaPEFTCallback(eps=0.1, method="best")


def test_find_unused_parameters_as_the_trainer_decides():
    """The Trainer's default finds unused parameters unless activation checkpointing is on."""
    from transformers import TrainingArguments

    from hf_models import bert
    from gen_optim.trainer import _ddp_finds_unused

    def args(**kw):
        return TrainingArguments(output_dir="unused", report_to="none", **kw)

    model = bert()
    assert _ddp_finds_unused(args(), model)
    model.activation_checkpointing_enable()
    assert not _ddp_finds_unused(args(), model)
    assert _ddp_finds_unused(args(ddp_find_unused_parameters=True), model)
    assert not _ddp_finds_unused(args(ddp_find_unused_parameters=False), bert())
