"""Run as `python amp_train.py OUT.json PRECISION DEVICE` with ACCELERATE_MIXED_PRECISION=bf16: GeNAdamW
with replay_closure under Accelerate's bf16 autocast on DEVICE (cpu or cuda); writes what the probes computed at."""
import json
import math
import sys

import torch
from accelerate import Accelerator
from hf_models import gpt2

from gen_optim import GeNAdamW, group_parameters, replay_closure

accelerator = Accelerator(cpu=sys.argv[3] == "cpu")
model = gpt2(seed=0)
closure = replay_closure(model, precision=sys.argv[2])
opt = GeNAdamW(group_parameters(model), closure, lr=3e-3, probe_every=2, warmup=10)
dtypes = {"training": set(), "probe": set()}
model.transformer.h[0].mlp.c_fc.register_forward_hook(
    lambda m, a, out: dtypes["probe" if closure.replaying else "training"].add(str(out.dtype)))
model, opt = accelerator.prepare(model, opt)
g = torch.Generator().manual_seed(0)
for _ in range(12):
    ids = torch.randint(0, 100, (4, 16), generator=g).to(accelerator.device)
    loss = model(input_ids=ids, labels=ids).loss
    accelerator.backward(loss)
    opt.step()
    opt.zero_grad()
gen = opt.optimizer
with open(sys.argv[1], "w") as f:
    json.dump({"mixed_precision": accelerator.mixed_precision, "device": accelerator.device.type, "dtypes": {k: sorted(v) for k, v in dtypes.items()},
               "rounds": gen.state["gen"]["rounds"], "rates_finite": all(math.isfinite(g["gen_lr"]) and g["gen_lr"] > 0
                                                                          for g in gen.param_groups),
               "reasons": [e["reason"] for r in gen.history for e in r["groups"].values()]}, f)
