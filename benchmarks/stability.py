"""Do fitted rates help or hurt? Held-out loss of AdamW and GeNAdamW on GPT-2 + LoRA and E2E.

The setting of the stable-rates issue: a 2-layer GPT-2 (width 128) with LoRA on c_attn, every
parameter trainable (six groups), a byte-level BPE tokenizer (vocab 1500) trained on the
E2E rows, 4,000 rows for training and 256 held out, batch 16, probe_every 4. Prints the
held-out loss at each evaluation step, mean (and worst) over seeds, for:
- AdamW at 3e-4, 1e-3, 3e-3;
- GeNAdamW as shipped (probes along the previous update on the current batch, warm-up) from
  1e-4, 1e-3, 1e-2, and with the joint correction from 1e-3;
- GeNAdamW as the paper's Algorithm 1 reads (this step's direction probed on the gradient's
  own batch, no warm-up), and the stable-rates issue's proposal (this step's direction probed
  on the previous batch, joint correction), from 1e-3;
- GeNAdamW with fresh-batch probes (this step's direction, probed on a training batch of its
  own, drawn by a second stream: what ``iterator_closure`` does), from 1e-4, 1e-3, 1e-2;
then whether each GeNAdamW run is within 2% of the best AdamW at the last step.
``--ablation`` instead runs each knob's default against other values (search, warm-up, the
progress test, smoothing, rate_clip) beside AdamW 1e-3 and the defaults from 1e-3 and 1e-2.

    python -m benchmarks.stability [--steps 200] [--seeds 0 1 2] [--configs NAME ... | --ablation]
"""
from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from examples.e2e import DATA, collate, encode, read_csv, train_tokenizer
from gen_optim import GeNAdamW, equip_lora, group_parameters, iterator_closure, replay_closure

FRESH = "fresh"  # a config's probe batch: a training batch of its own, not the step's (replay_closure's "current"/"previous")
FRESH_STREAM = 10_000  # the fresh batches' random stream is the seed's plus this, apart from the training order's

CONFIGS = {
    "adamw 3e-4": dict(lr=3e-4),
    "adamw 1e-3": dict(lr=1e-3),
    "adamw 3e-3": dict(lr=3e-3),
    "gen 1e-4": dict(lr=1e-4, gen={}),
    "gen 1e-3": dict(lr=1e-3, gen={}),
    "gen 1e-2": dict(lr=1e-2, gen={}),
    "gen + joint 1e-3": dict(lr=1e-3, gen=dict(joint=True)),
    "paper literal 1e-3": dict(lr=1e-3, gen=dict(probe_direction="current", warmup=0), batch="current"),
    "previous batch + joint 1e-3": dict(lr=1e-3, gen=dict(probe_direction="current", warmup=0, joint=True), batch="previous"),
    **{f"gen fresh-batch probes {lr}": dict(lr=float(lr), gen=dict(probe_direction="current"), batch=FRESH)
       for lr in ("1e-4", "1e-3", "1e-2")},
}
ABLATIONS = {
    "gen 1e-2 search 0": dict(lr=1e-2, gen=dict(search=0)),
    "gen 1e-4 warmup 0": dict(lr=1e-4, gen=dict(warmup=0)),
    "gen 1e-3 warmup 0": dict(lr=1e-3, gen=dict(warmup=0)),
    "gen 1e-2 warmup 0": dict(lr=1e-2, gen=dict(warmup=0)),
    "gen 1e-2 warmup 20": dict(lr=1e-2, gen=dict(warmup=20)),
    "gen 1e-3 smoothing 0.5": dict(lr=1e-3, gen=dict(smoothing=0.5)),
    "gen 1e-3 smoothing 0.97": dict(lr=1e-3, gen=dict(smoothing=0.97)),
    "gen 1e-4 rate_clip 0.8-1.25": dict(lr=1e-4, gen=dict(rate_clip=(0.8, 1.25))),
    "gen 1e-3 rate_clip 0.8-1.25": dict(lr=1e-3, gen=dict(rate_clip=(0.8, 1.25))),
    "gen 1e-2 rate_clip 0.8-1.25": dict(lr=1e-2, gen=dict(rate_clip=(0.8, 1.25))),
    "gen 1e-3 rate_clip 0.25-4": dict(lr=1e-3, gen=dict(rate_clip=(0.25, 4.0))),
    **{f"gen {lr} progress off": dict(lr=float(lr), gen=dict(progress=False)) for lr in ("1e-4", "1e-3", "1e-2")},
}


def load(n_train: int = 4000, n_held_out: int = 256):
    rows = read_csv(DATA / "train.csv")
    random.Random(0).shuffle(rows)
    train, held_out = rows[:n_train], rows[n_train : n_train + n_held_out]
    tokenizer = train_tokenizer(train)
    return encode(train, tokenizer), encode(held_out, tokenizer), tokenizer


@torch.no_grad()
def held_out_loss(model, examples, pad_id, batch=64, collate_fn=collate):
    """The mean loss per labelled token over ``examples``, batched by ``collate_fn``."""
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(examples), batch):
        b = {k: v.to(device) for k, v in collate_fn(examples[i : i + batch], pad_id).items()}
        tokens = int((b["labels"][:, 1:] != -100).sum())
        total += model(**b).loss.item() * tokens
        count += tokens
    model.train()
    return total / count


def model_for(tokenizer, seed: int) -> torch.nn.Module:
    """The benchmark's model: a 2-layer GPT-2 (width 128) with LoRA on c_attn, all trainable."""
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_embd=128, n_head=4, vocab_size=len(tokenizer), n_positions=128,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    return equip_lora(GPT2LMHeadModel(config), r=8, target_modules=["c_attn"], fan_in_fan_out=True)


def fresh_batches(train, pad_id: int, seed: int, batch: int):
    """Training batches drawn apart from the training order, for fresh-batch probes."""
    order = random.Random(FRESH_STREAM + seed)
    while True:
        yield collate(order.sample(train, batch), pad_id)


def run(config: dict, seed: int, data, steps: int = 200, eval_every: int = 50, batch: int = 16, probe_every: int = 4):
    """Held-out losses at every ``eval_every`` steps of one configuration (inf once diverged)."""
    train, held_out, tokenizer = data
    model = model_for(tokenizer, seed)
    groups = group_parameters(model)
    if "gen" in config:
        if config.get("batch") == FRESH:
            closure = iterator_closure(model, fresh_batches(train, tokenizer.pad_token_id, seed, batch))
        else:
            closure = replay_closure(model, batch=config.get("batch", "current"))
        opt = GeNAdamW(groups, closure, lr=config["lr"], probe_every=probe_every, **config["gen"])
    else:
        opt = torch.optim.AdamW(groups, lr=config["lr"])
    order = random.Random(seed)
    losses = []
    for step in range(1, steps + 1):
        b = collate(order.sample(train, batch), tokenizer.pad_token_id)
        opt.zero_grad()
        loss = model(**b).loss
        loss.backward()
        opt.step()
        if step % eval_every == 0:
            value = held_out_loss(model, held_out, tokenizer.pad_token_id)
            losses.append(value if math.isfinite(value) else math.inf)
    return losses, opt


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval_every", type=int, default=50)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS) + list(ABLATIONS))
    parser.add_argument("--ablation", action="store_true", help="the knobs' defaults against other values")
    args = parser.parse_args()
    configs = {**CONFIGS, **ABLATIONS}
    if args.ablation:
        args.configs = ["adamw 1e-3", "gen 1e-3", "gen 1e-2", *ABLATIONS]
    data = load()
    results, started = {}, time.time()
    for name in args.configs:
        results[name] = [run(configs[name], seed, data, args.steps, args.eval_every)[0] for seed in args.seeds]
        print(f"  ran {name} ({time.time() - started:.0f} s)", file=sys.stderr, flush=True)
    evals = list(range(args.eval_every, args.steps + 1, args.eval_every))
    print(f"held-out loss, mean over seeds {args.seeds} (worst seed in brackets); torch {torch.__version__}")
    print("| optimizer | " + " | ".join(str(s) for s in evals) + " |")
    print("|---|" + "---|" * len(evals))
    for name, runs in results.items():
        cells = [f"{statistics.mean(r[i] for r in runs):.3f} ({max(r[i] for r in runs):.3f})" for i in range(len(evals))]
        print(f"| {name} | " + " | ".join(cells) + " |")
    adamw = {n: statistics.mean(r[-1] for r in runs) for n, runs in results.items() if n.startswith("adamw")}
    if adamw:
        best_name, best = min(adamw.items(), key=lambda kv: kv[1])
        print(f"best AdamW at step {evals[-1]}: {best_name} {best:.3f}")
        for name, runs in results.items():
            if not name.startswith("adamw"):
                final = statistics.mean(r[-1] for r in runs)
                print(f"{name}: {final:.3f} = {final / best:.3f} x best AdamW ({'within' if final <= 1.02 * best else 'NOT within'} 2%)")


if __name__ == "__main__":
    main()
