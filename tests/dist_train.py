"""Run under `accelerate launch --multi_gpu --num_processes 2`: GeNAdamW with probing under DDP.

argv: the result file, then "fixed" (probe every 2 steps) or "budget" (the probe budget schedules)."""
import json
import os
import sys

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from hf_models import gpt2

from gen_optim import GeNAdamW, group_parameters, replay_closure

accelerator = Accelerator(gradient_accumulation_steps=2)
assert accelerator.distributed_type == DistributedType.MULTI_CPU, accelerator.distributed_type
assert accelerator.num_processes == 2
model = gpt2(seed=0)
model.config.resid_pdrop = 0.1
schedule = dict(probe_every=2, warmup=3) if sys.argv[2] == "fixed" else dict(probe_budget=0.5, warmup=3)
opt = GeNAdamW(group_parameters(model), replay_closure(model), lr=3e-3, **schedule)
model, opt = accelerator.prepare(model, opt)
g = torch.Generator().manual_seed(1000 + accelerator.process_index)  # different data per rank
batch_losses = []
for _ in range(40):  # 20 optimizer steps with 2 micro-batches each
    ids = torch.randint(0, 100, (4, 16), generator=g)
    with accelerator.accumulate(model):
        loss = model(input_ids=ids, labels=ids).loss
        accelerator.backward(loss)
        opt.step()
        opt.zero_grad()
    batch_losses.append(loss.item())
flat = torch.cat([p.detach().reshape(-1) for p in accelerator.unwrap_model(model).parameters()])
weights = accelerator.gather(flat[None]).tolist()
losses = accelerator.gather(torch.tensor([batch_losses[0]])).tolist()
appi = accelerator.gather(torch.tensor([list(opt.state["appi"].values())])).tolist()
credit = accelerator.gather(torch.tensor([[g["gen_credit"] for g in opt.param_groups]], dtype=torch.float64)).tolist()
if accelerator.is_main_process:
    with open(sys.argv[1], "w") as f:
        json.dump({"weights_equal": weights[0] == weights[1], "first_losses": losses, "appi": appi, "credit": credit,
                   "steps": opt.optimizer.state["gen"]["step"], "rounds": opt.state["gen"]["rounds"]}, f)
accelerator.wait_for_everyone()
accelerator.end_training()
# Skip interpreter finalization: gloo's worker threads can abort it ("terminate called without
# an active exception", about 1 run in 6 here; see pytorch/pytorch#179291) after all work is done.
os._exit(0)
