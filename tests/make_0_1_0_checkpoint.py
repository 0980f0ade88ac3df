"""Writes data/gen_adamw_0.1.0.pt: a GeNAdamW checkpoint saved by gen_optim 0.1.0 (commit fad5d70).

Run with 0.1.0 first on the path, e.g.
    git archive fad5d70 gen_optim | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old python tests/make_0_1_0_checkpoint.py
"""
from pathlib import Path

import torch
import torch.nn.functional as F
from conftest import Net, make_data

import gen_optim

assert gen_optim.__version__ == "0.1.0" and "step" in gen_optim.GeNAdamW(Net().parameters()).state, "needs 0.1.0"
torch.manual_seed(0)
model = Net()
tokens, target = make_data()
opt = gen_optim.GeNAdamW(gen_optim.group_parameters(model), lambda: F.mse_loss(model(tokens), target),
                         lr=1e-2, probe_every=2, warmup=2)
for _ in range(6):
    opt.zero_grad()
    F.mse_loss(model(tokens), target).backward()
    opt.step()
opt.propose_mask(0.5)
torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, Path(__file__).with_name("data") / "gen_adamw_0.1.0.pt")
