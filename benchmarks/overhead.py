"""Step time and peak memory of GeNAdamW against torch.optim.AdamW on a small GPT-2.

Prints, measured side by side in one run (configurations interleaved, medians of rounds):
- GeNAdamW with probing off vs AdamW (target <= 1.03);
- GeNAdamW probing every P steps vs AdamW, and that ratio against the theory (which leaves out
  the progress test; ``gen_untested`` probes without it, and the two are compared)
  1 + n_fwd * F / (P * (F + B)), n_fwd = len(probe_scales) * K + 1 (+1 with the joint
  correction, --joint), F a no-grad forward and F + B a training forward and backward (target: within 10%);
- ``opt.step()`` alone between rounds: AdamW, and GeNAdamW without and with the progress test
  (what the test costs, apart from the forwards and backwards that make whole steps noisy);
- peak memory of each vs AdamW over a probe period after the first step, model included
  (CUDA: max allocated; CPU: sampled peak of the C heap in use, see ``common.HeapPeak``);
- with ``--whole_run N``: the wall time of whole runs of N steps from fresh optimizers, AdamW
  against GeNAdamW at its defaults (the probe budget, warm-up and the first round's search
  included; ``replay_closure``, so probes see each step's batch), alternating, each from the same
  weights over the same ``WHOLE_RUN_BATCHES`` batches in turn, the part of each inside ``opt.step()``
  (probes and the progress test are; forward and backward are not; on CUDA timing it synchronises
  every step, AdamW's and GeNAdamW's alike), the *paired* ratio (``paired_ratios``: the runs'
  difference inside ``opt.step()`` over the AdamW run beside it, the steadier measure), and the
  probe forwards per step;
  with ``--chunk_ablation``, also GeNAdamW computing directions one tensor per chunk
  (``probe.PROBE_CHUNK = 1``: the kernel launches of a loop over the tensors); with
  ``--warmup_ablation``, also GeNAdamW with the earlier default warm-up (``common.WARMUP_BEFORE``
  rounds after the moments' transient); with ``--count_ablation``, also GeNAdamW with the budget's
  credit as a training step was counted before (``common.STEP_FORWARDS_BEFORE`` forwards); with
  ``--budget_ablation``, also GeNAdamW with the earlier default budget (``common.BUDGET_BEFORE``); with
  ``--gift_ablation``, also GeNAdamW with each group's starting credit a gift, as before 2026-12-07
  (``common.forgive_debts``).

``--quick``: a 1-layer GPT-2 of width 32, 24-step whole runs, one round (mechanics only, for CI).

    python -m benchmarks.overhead [--device cuda] [--rounds 5]
        [--whole_run 1000 [--whole_repeats 2] [--chunk_ablation] [--warmup_ablation] [--count_ablation] [--budget_ablation] [--gift_ablation]] [--quick]
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics

import torch
from benchmarks.common import (BUDGET_BEFORE, COUNT_BEFORE, STEP_FORWARDS_BEFORE, WARMUP_BEFORE, ProbeForwards, batches,
                               forgive_debts, gpt2, interleaved_step_times, peak_memory, timed, train_steps)

from gen_optim import GeNAdamW, group_parameters, probe, replay_closure
from gen_optim.rule import STEP_FORWARDS

KINDS = ("adamw", "gen_off", "gen_probe", "gen_untested")  # gen_untested: probing, without the progress test
WHOLE_RUN_BATCHES = 16  # distinct batches a whole run cycles through


def make_optimizer(kind, model, probe, probe_every, joint=False):
    if kind == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=1e-4)
    closure = lambda: model(input_ids=probe, labels=probe).loss  # noqa: E731
    # warmup=0, search=0: the steady state; warm-up adds `warmup` probe rounds and the first
    # round's search at most `search` more, once per run
    return GeNAdamW(group_parameters(model), closure, lr=1e-4, probe_every=0 if kind == "gen_off" else probe_every,
                    warmup=0, search=0, joint=joint, progress=kind != "gen_untested")


def forward_backward_times(model, batch, device, repeats):
    def forward():
        with torch.no_grad():
            model(input_ids=batch, labels=batch)

    def forward_backward():
        model(input_ids=batch, labels=batch).loss.backward()

    F = statistics.median(timed(forward, device) for _ in range(repeats))
    FB = statistics.median(timed(forward_backward, device) for _ in range(repeats))
    model.zero_grad(set_to_none=True)
    return F, FB - F


def memory_run(kind, args):
    """Builds one configuration; returns its run: a probe period of steps after the first."""
    def prepare():
        model = gpt2(args.layers, args.width, args.seq, args.device)
        data, probe = batches(2, args.batch, args.seq, args.device)
        opt = make_optimizer(kind, model, probe, args.probe_every, args.joint)
        train_steps(model, opt, data, 1)  # gradients and optimizer state exist
        return lambda: train_steps(model, opt, data, args.probe_every)
    return prepare


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--probe_every", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--joint", action="store_true", help="probe with the joint correction")
    parser.add_argument("--whole_run", type=int, default=0, help="also time whole runs of this many steps")
    parser.add_argument("--whole_repeats", type=int, default=2, help="whole runs of each kind, alternating")
    parser.add_argument("--chunk_ablation", action="store_true", help="whole runs also with one tensor per probe chunk")
    parser.add_argument("--warmup_ablation", action="store_true",
                        help=f"whole runs also with warmup={WARMUP_BEFORE} (the earlier default)")
    parser.add_argument("--count_ablation", action="store_true",
                        help=f"whole runs also with a step counted as {STEP_FORWARDS_BEFORE:g} forwards (before)")
    parser.add_argument("--budget_ablation", action="store_true",
                        help=f"whole runs also with probe_budget={BUDGET_BEFORE['probe_budget']:g} (the earlier default)")
    parser.add_argument("--gift_ablation", action="store_true",
                        help="whole runs also with each group's starting credit a gift (before 2026-12-07)")
    parser.add_argument("--quick", action="store_true", help="a tiny GPT-2, short whole runs: mechanics only")
    args = parser.parse_args()
    if args.quick:
        args.layers, args.width, args.seq, args.batch, args.rounds, args.probe_every = 1, 32, 16, 2, 1, 2
        args.whole_run, args.whole_repeats = 24, 1
    time_steps(args)  # its model and optimizers are gone before memory is measured
    optimizer_step_times(args)
    if args.whole_run:
        whole_runs(args)
    peak = {k: peak_memory(memory_run(k, args), args.device) for k in KINDS}
    print("peak memory: " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in peak.items()))
    print(f"peak memory / AdamW: probing off {peak['gen_off'] / peak['adamw']:.3f}, probing on {peak['gen_probe'] / peak['adamw']:.3f}, "
          f"without the progress test {peak['gen_untested'] / peak['adamw']:.3f} "
          f"(a probe round holds one copy of the largest group, 'others')")


def time_steps(args):
    """Step times of the three kinds, interleaved on one model, against the theory."""
    model = gpt2(args.layers, args.width, args.seq, args.device)
    data, probe = batches(2, args.batch, args.seq, args.device)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizers = {k: make_optimizer(k, model, probe, args.probe_every, args.joint) for k in KINDS}
    reset = lambda: model.load_state_dict(initial)  # noqa: E731  every optimizer starts from the same weights
    runs = {k: (model, opt, reset) for k, opt in optimizers.items()}
    step = interleaved_step_times(runs, data, 2 * args.probe_every, args.rounds, args.device)
    F, B = forward_backward_times(model, data, args.device, 10)
    gen = optimizers["gen_probe"]
    K = len(gen.param_groups)
    n_fwd = len(gen.defaults["probe_scales"]) * K + 1 + int(gen.defaults["joint"])
    theory = 1 + n_fwd * F / (args.probe_every * (F + B))
    print(f"model: GPT-2 {args.layers} layers, width {args.width}, batch {args.batch}x{args.seq}, device {args.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"step time (median of {args.rounds} rounds): " + ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in step.items()))
    print(f"F (no-grad forward) {1e3 * F:.1f} ms, B (backward) {1e3 * B:.1f} ms, K={K} groups, {n_fwd} probe forwards per round")
    print(f"GeNAdamW probing off / AdamW:        {step['gen_off'] / step['adamw']:.3f}   (target <= 1.03)")
    measured = step["gen_probe"] / step["adamw"]
    print(f"GeNAdamW probe_every={args.probe_every} / AdamW:   {measured:.3f}   theory {theory:.3f}, "
          f"measured/theory {measured / theory:.3f}   (target within 10%)")
    print(f"the progress test (every step): GeNAdamW with it / without it {step['gen_probe'] / step['gen_untested']:.3f}")


def optimizer_step_times(args, steps=50):
    """``opt.step()`` alone between rounds (one batch's gradients held, no probe due): AdamW,
    GeNAdamW without the progress test and with it, interleaved, medians of ``args.rounds``."""
    model = gpt2(args.layers, args.width, args.seq, args.device)
    data, probe = batches(2, args.batch, args.seq, args.device)
    kinds = ("adamw", "gen_untested", "gen_probe")
    optimizers = {k: make_optimizer(k, model, probe, probe_every=10**9) for k in kinds}  # one round, at step 0
    for opt in optimizers.values():
        train_steps(model, opt, data, 2)
    model(input_ids=data, labels=data).loss.backward()  # the gradients every optimizer steps with

    def stepping(opt):
        return lambda: [opt.step() for _ in range(steps)]

    times = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for k, opt in optimizers.items():
            times[k].append(timed(stepping(opt), args.device) / steps)
    adamw, untested, tested = (statistics.median(times[k]) for k in kinds)
    print(f"opt.step() alone between rounds (gradients held; median of {args.rounds} rounds of {steps}): AdamW "
          f"{1e3 * adamw:.2f} ms, GeNAdamW without the progress test {1e3 * untested:.2f} ms, with it {1e3 * tested:.2f} ms "
          f"(the test: {(tested - untested) / adamw:.2f} AdamW steps)")


@dataclasses.dataclass(frozen=True)
class WholeRunVariant:
    """A GeNAdamW configuration of the whole runs: its probe chunk, its settings, and whether its
    groups' starting credit is a gift (``common.forgive_debts``)."""
    chunk: int = probe.PROBE_CHUNK
    settings: dict = dataclasses.field(default_factory=dict)
    gift: bool = False


def whole_runs(args):
    """Whole runs from fresh optimizers: AdamW against GeNAdamW at its defaults, alternating."""
    model = gpt2(args.layers, args.width, args.seq, args.device)
    data = batches(WHOLE_RUN_BATCHES, args.batch, args.seq, args.device)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    probes = ProbeForwards(model)
    variants = {"GeNAdamW at its defaults": WholeRunVariant()}
    if args.chunk_ablation:
        variants["GeNAdamW, one tensor per chunk"] = WholeRunVariant(chunk=1)
    if args.warmup_ablation:
        variants[f"GeNAdamW, warmup={WARMUP_BEFORE} (the earlier default)"] = WholeRunVariant(
            settings={"warmup": WARMUP_BEFORE})
    if args.count_ablation:
        variants[f"GeNAdamW, a step counted as {STEP_FORWARDS_BEFORE:g} forwards (before)"] = WholeRunVariant(
            settings=COUNT_BEFORE)
    if args.budget_ablation:
        variants[f"GeNAdamW, probe_budget={BUDGET_BEFORE['probe_budget']:g} (the earlier default)"] = WholeRunVariant(
            settings=BUDGET_BEFORE)
    if args.gift_ablation:
        variants["GeNAdamW, the starting credit a gift (before)"] = WholeRunVariant(gift=True)
    default_chunk = probe.PROBE_CHUNK
    seconds = {"AdamW": []} | {kind: [] for kind in variants}
    in_step = {kind: [] for kind in seconds}  # of each run's time, the part inside opt.step()
    forwards = {}
    for _ in range(args.whole_repeats):
        for kind in seconds:
            model.load_state_dict(initial)
            torch.manual_seed(0)  # the same dropout masks in every run
            if kind == "AdamW":
                opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            else:
                opt = GeNAdamW(group_parameters(model), replay_closure(model), lr=1e-4, **variants[kind].settings)
                if variants[kind].gift:
                    forgive_debts(opt)
                probe.PROBE_CHUNK = variants[kind].chunk
            probes.count = 0
            stepping = [0.0]

            def run():
                for step in range(args.whole_run):
                    batch = data[step % len(data)]
                    opt.zero_grad(set_to_none=True)
                    model(input_ids=batch, labels=batch).loss.backward()
                    stepping[0] += timed(opt.step, args.device)
            seconds[kind].append(timed(run, args.device))
            in_step[kind].append(stepping[0])
            forwards[kind] = probes.count
            if kind != "AdamW":
                opt.closure.hook.remove()
                probe.PROBE_CHUNK = default_chunk
    adamw = statistics.median(seconds["AdamW"])
    print(f"whole runs of {args.whole_run} steps ({args.whole_repeats} of each, alternating; median): AdamW {adamw:.1f} s "
          f"({', '.join(f'{t:.1f}' for t in seconds['AdamW'])}; in opt.step() {statistics.median(in_step['AdamW']):.1f} s)")
    for kind in variants:
        t = statistics.median(seconds[kind])
        print(f"  {kind}: {t:.1f} s ({', '.join(f'{x:.1f}' for x in seconds[kind])}; in opt.step() "
              f"{statistics.median(in_step[kind]):.1f} s), ratio {t / adamw:.3f} "
              f"(issue 10's target <= 1.15), paired {statistics.median(paired_ratios(seconds, in_step, kind)):.3f}; "
              f"{forwards[kind] / args.whole_run:.3f} probe forwards per step, "
              f"a compute fraction of {forwards[kind] / args.whole_run / STEP_FORWARDS:.3f}")


def paired_ratios(seconds: dict, in_step: dict, kind: str) -> list[float]:
    """Each repeat's ratio of ``kind`` to the AdamW run beside it, counting from both runs only
    what differs: ``(AdamW's run - AdamW's opt.step() + kind's opt.step()) / AdamW's run``. The
    forwards and backwards outside ``opt.step()`` are the same work in both (same weights,
    batches and dropout masks), and they carry most of the machine's noise: whole AdamW runs
    spread by 10-20% from run to run here."""
    return [(adamw - adamw_step + step) / adamw
            for adamw, adamw_step, step in zip(seconds["AdamW"], in_step["AdamW"], in_step[kind])]


if __name__ == "__main__":
    main()
