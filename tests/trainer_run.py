"""A tiny BERT trained through the HF Trainer with GeNAdamW and AdaPEFTCallback.

    python trainer_run.py OUT_DIR [--resume CHECKPOINT] [--no_find_unused]
Run alone or under `torchrun --nproc_per_node 2`; writes OUT_DIR/result-<rank>.json.
"""
import argparse
import json
import os

import torch
from hf_models import bert
from transformers import Trainer, TrainerCallback, TrainingArguments

from gen_optim import GeNAdamW, group_parameters, replay_closure
from gen_optim.trainer import AdaPEFTCallback


class Rows(torch.utils.data.Dataset):
    def __init__(self, n=256):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(3, 100, (n, 12), generator=g)
        self.labels = (self.ids[:, :6].sum(1) > self.ids[:, 6:].sum(1)).long()

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("--resume", default=None)
parser.add_argument("--no_find_unused", action="store_true")
cli = parser.parse_args()
model = bert()
opt = GeNAdamW(group_parameters(model), replay_closure(model), lr=1e-3, probe_every=2, warmup=2)
args = TrainingArguments(output_dir=cli.out, max_steps=20, per_device_train_batch_size=8, logging_steps=4,
                         save_steps=8, report_to="none", use_cpu=True, seed=0, data_seed=0,
                         ddp_find_unused_parameters=not cli.no_find_unused, disable_tqdm=True)


class Reporter(TrainerCallback):
    """Stands in for a reporting integration (TensorBoard, W&B), which the Trainer places first."""

    def __init__(self):
        self.keys = set()

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.keys |= set(logs)


callback, reporter = AdaPEFTCallback(eps=0.3, select_at=0.25), Reporter()
trainer = Trainer(model, args, train_dataset=Rows(), optimizers=(opt, None), callbacks=[reporter, callback])
trainer.callback_handler.callbacks.insert(0, trainer.pop_callback(AdaPEFTCallback))  # as the README says
trainer.train(resume_from_checkpoint=cli.resume)
rank = int(os.environ.get("RANK", 0))
result = {
    "mask": None if callback.mask is None else list(callback.mask.active),
    "trainable": {n: p.requires_grad for n, p in model.named_parameters()},
    "grads": {n: p.grad is not None for n, p in model.named_parameters()},
    "appi": opt.state["appi"], "rounds": opt.state["gen"]["rounds"],
    "log_keys": sorted({k for entry in trainer.state.log_history for k in entry}),
    "reported_keys": sorted(reporter.keys),
    "weights": [p.detach().double().sum().item() for p in model.parameters()],
    "world_size": args.world_size, "parallel_mode": str(args.parallel_mode),
}
with open(os.path.join(cli.out, f"result-{rank}.json"), "w") as f:
    json.dump(result, f)
