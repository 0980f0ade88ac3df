import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import Net, make_data
from hf_models import gpt2
from gen_optim import GeNAdamW, group_parameters, iterator_closure, replay_closure

HERE = Path(__file__).parent


@pytest.mark.parametrize("schedule", ["fixed", "budget"])
def test_ddp_two_processes_stay_identical(tmp_path, schedule):
    out = tmp_path / "result.json"
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(HERE / "dist_train.py"), str(out), schedule]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["first_losses"][0] != result["first_losses"][1]  # the ranks saw different data
    assert result["weights_equal"]
    assert result["appi"][0] == result["appi"][1] and max(result["appi"][0]) > 0
    assert result["credit"][0] == result["credit"][1]  # the budget's schedule in lockstep
    if schedule == "fixed":
        # every warm-up step (the moments' 10, then warmup=3), then every 2nd: 14, 16, 18
        assert result["steps"] == 20 and result["rounds"] == 13 + 3
    else:
        assert result["steps"] == 20 and 3 <= result["rounds"] < 20


def test_replay_closure_probes_the_previous_batch_of_an_hf_model():
    model = gpt2()
    closure = replay_closure(model, batch="previous")
    opt = GeNAdamW(group_parameters(model), closure, lr=3e-3, probe_every=1)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 100, (4, 16), generator=g) for _ in range(3)]
    replayed = []
    for ids in batches:
        opt.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        with torch.no_grad():
            model.eval()
            model(input_ids=ids)  # an evaluation forward is not recorded
            model.train()
        opt.step()
        replayed.append(closure._batch.kwargs["input_ids"])
    # the first round has no previous batch and uses the current one; later rounds the previous
    assert [r is b for r, b in zip(replayed, [batches[0], batches[0], batches[1]])] == [True] * 3
    assert len(opt.history) == 3 and all(r["groups"]["others"]["r2"] > 0.9 for r in opt.history)


def test_replay_closure_replays_the_current_batch_by_default():
    model = gpt2()
    closure = replay_closure(model)
    opt = GeNAdamW(group_parameters(model), closure, probe_every=1)
    for seed in range(2):
        ids = torch.randint(0, 100, (4, 16), generator=torch.Generator().manual_seed(seed))
        opt.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        assert closure._batch.kwargs["input_ids"] is ids
    with pytest.raises(ValueError, match="batch must be"):
        replay_closure(model, batch="next")


def test_replay_closure_needs_a_loss():
    model = Net()
    closure = replay_closure(model)
    tokens, _ = make_data()
    model(tokens).sum().backward()
    opt = GeNAdamW(model.parameters(), closure, probe_every=1)
    try:
        opt.step()
    except ValueError as err:
        assert "loss_fn" in str(err)
    else:
        raise AssertionError("a model output without loss must raise")


def test_iterator_closure_draws_a_fresh_batch_per_round():
    torch.manual_seed(0)
    model = Net()
    probe = [make_data(seed=s) for s in range(10, 13)]
    closure = iterator_closure(model, probe, lambda m, batch: F.mse_loss(m(batch[0]), batch[1]))
    opt = GeNAdamW(group_parameters(model), closure, probe_every=1, joint=False)
    tokens, target = make_data()
    for step in range(4):
        opt.zero_grad()
        F.mse_loss(model(tokens), target).backward()
        opt.step()
        assert closure._batch is probe[step % 3]  # cycled after the third round
