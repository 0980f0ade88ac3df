"""At which precision should probes run under mixed-precision training?

The stability benchmark's setting (2-layer GPT-2 width 128 + LoRA, E2E rows, batch 16,
probe_every 4, GeNAdamW from 1e-3), trained under ``torch.autocast(device, torch.bfloat16)``
(float32 weights, bfloat16 matmuls: what Accelerate's ``--mixed_precision bf16`` does), with:
- float32 training, for reference;
- bf16 training, probes at full precision (``replay_closure(model)``, the default);
- bf16 training, probes in bf16 (``replay_closure(model, precision="training")``);
- AdamW 1e-3 under bf16;
- with ``--fp16``, the same three under float16 autocast with torch's ``GradScaler`` (the way
  fp16 trains on GPUs; on the CPU autocast runs float16 too, slowly).
Prints the held-out loss (float32) at the end and each group's final fitted rate.

    python -m benchmarks.precision [--steps 200] [--seeds 0 1] [--device cuda] [--fp16]
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

import torch

from benchmarks.stability import collate, held_out_loss, load, model_for
from gen_optim import GeNAdamW, group_parameters, replay_closure

ARMS = {
    "float32": dict(autocast=None, probes="full"),
    "bf16, full-precision probes": dict(autocast=torch.bfloat16, probes="full"),
    "bf16, bf16 probes": dict(autocast=torch.bfloat16, probes="training"),
    "adamw 1e-3, bf16": dict(autocast=torch.bfloat16, adamw=True),
}
FP16_ARMS = {
    "fp16 + GradScaler, full-precision probes": dict(autocast=torch.float16, probes="full"),
    "fp16 + GradScaler, fp16 probes": dict(autocast=torch.float16, probes="training"),
    "adamw 1e-3, fp16 + GradScaler": dict(autocast=torch.float16, adamw=True),
}


def run(arm: dict, seed: int, data, steps: int, batch: int = 16, device: str = "cpu"):
    train, held_out, tokenizer = data
    model = model_for(tokenizer, seed).to(device)
    if arm.get("adamw"):
        opt = torch.optim.AdamW(group_parameters(model), lr=1e-3)
    else:
        opt = GeNAdamW(group_parameters(model), replay_closure(model, precision=arm["probes"]), lr=1e-3, probe_every=4)
    scaler = torch.amp.GradScaler(device, enabled=arm["autocast"] is torch.float16)
    order = random.Random(seed)
    for _ in range(steps):
        b = {k: v.to(device) for k, v in collate(order.sample(train, batch), tokenizer.pad_token_id).items()}
        opt.zero_grad()
        with torch.autocast(device, dtype=arm["autocast"] or torch.bfloat16, enabled=arm["autocast"] is not None):
            loss = model(**b).loss
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    rates = {} if arm.get("adamw") else {g["name"]: g["gen_lr"] for g in opt.param_groups}
    return held_out_loss(model, held_out, tokenizer.pad_token_id), rates


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fp16", action="store_true", help="also the float16 arms, with torch's GradScaler")
    args = parser.parse_args()
    data = load()
    started = time.time()
    print(f"held-out loss after {args.steps} steps, mean over seeds {args.seeds}; final fitted rates of seed "
          f"{args.seeds[0]}; device {args.device}; torch {torch.__version__}")
    print("| arm | held-out loss | lora_A | lora_B | norm | bias | embed | others |")
    print("|---|---|---|---|---|---|---|---|")
    for name, arm in (ARMS | FP16_ARMS if args.fp16 else ARMS).items():
        results = [run(arm, seed, data, args.steps, device=args.device) for seed in args.seeds]
        rates = results[0][1]
        cells = [f"{rates[g]:.1e}" if g in rates else "" for g in ("lora_A", "lora_B", "norm", "bias", "embed", "others")]
        print(f"| {name} | {statistics.mean(r[0] for r in results):.3f} | " + " | ".join(cells) + " |", flush=True)
        print(f"  ran {name} ({time.time() - started:.0f} s)", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
