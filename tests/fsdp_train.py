"""GeNAdamW under FSDP2 (`torchrun --nproc_per_node 2 fsdp_train.py OUT.json`) or alone on the
whole batch (`python fsdp_train.py OUT.json`): an MLP whose LayerNorm belongs to the root
module, probing every 2 steps for 20 steps; from step 10 only the mask's groups train; the
progress test (sums over the shards) runs at every step."""
import json
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from gen_optim import GeNAdamW, Mask, group_parameters
from gen_optim.rule import Progress

sharded = "RANK" in os.environ
if sharded:
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo")
rank, world = (dist.get_rank(), dist.get_world_size()) if sharded else (0, 1)
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.LayerNorm(32), torch.nn.Tanh(), torch.nn.Linear(32, 32),
                            torch.nn.Tanh(), torch.nn.Linear(32, 1)).double()  # float64: fits agree to ~1e-12
if sharded:  # each Linear its own FSDP unit (the middle one keeps its weights gathered after
    # forward, as the root does); the LayerNorm stays with the root
    for i, module in enumerate(model):
        if isinstance(module, torch.nn.Linear):
            fully_shard(module, reshard_after_forward=i != 3)
    fully_shard(model)
g = torch.Generator().manual_seed(1)
X, Y = torch.randn(64, 8, generator=g).double(), torch.randn(64, 1, generator=g).double()
x, y = X.chunk(world)[rank], Y.chunk(world)[rank]  # the same global batch, split over the ranks
opt = GeNAdamW(group_parameters(model), lambda: F.mse_loss(model(x), y), lr=1e-2, probe_every=2, warmup=4)
for step in range(20):
    if step == 10:
        opt.freeze(Mask(("norm", "others"), 0.0, None, "fixed"))
    opt.zero_grad()
    F.mse_loss(model(x), y).backward()
    opt.step()
trainable = [p.requires_grad for p in model.parameters()]
applied = Mask(("bias",), 0.0, None, "fixed").apply(model)  # a transfer onto the sharded model
full = [p.full_tensor() if hasattr(p, "full_tensor") else p.detach() for p in model.parameters()]
if rank == 0:
    with open(sys.argv[1], "w") as f:
        json.dump({"rates": {grp["name"]: grp["gen_lr"] for grp in opt.param_groups}, "appi": opt.state["appi"],
                   "progress": {grp["name"]: [grp[k] for k in Progress.KEYS] for grp in opt.param_groups},
                   "sizes": opt.group_sizes(), "weights": [w.tolist() for w in full],
                   "reasons": [{n: e["reason"] for n, e in r["groups"].items()} for r in opt.history],
                   "fits": [{n: (e["A"], e["B"], e["ppi"]) for n, e in r["groups"].items()} for r in opt.history],
                   "trainable": trainable,
                   "state": [bool(opt.state.get(p)) for p in model.parameters()],
                   "grads": [p.grad is not None for p in model.parameters()],
                   "applied": [applied, [p.requires_grad for p in model.parameters()]]}, f)
if sharded:
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)  # gloo's threads can abort interpreter teardown after all work is done (see dist_train.py)
