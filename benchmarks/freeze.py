"""Cost of a model after ``GeNAdamW.freeze()`` against the same model with the same
``requires_grad`` from the start, and against a peft LoRA model of about the same trainable size.

Prints step-time and peak-memory ratios measured side by side in one run (target: frozen vs
from-the-start <= 1.05). Probing is off in all three, so only the training step is compared.
Memory: the peak in use over 4 steps after the first, model included (CUDA: max allocated;
CPU: sampled peak of the C heap in use, see ``common.HeapPeak``); plus the bytes held by
gradients and optimizer state, counted tensor by tensor.

    python -m benchmarks.freeze [--device cuda] [--rounds 5]
"""
from __future__ import annotations

import argparse

import torch
from benchmarks.common import batches, gpt2, interleaved_step_times, peak_memory, train_steps

from gen_optim import GeNAdamW, Mask, equip_lora, group_parameters

KINDS = ("frozen", "from_start", "lora")
ACTIVE = ("norm", "bias")


def trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def state_bytes(model, opt):
    grads = sum(p.grad.nbytes for p in model.parameters() if p.grad is not None)
    return grads + sum(t.nbytes for k, s in opt.state.items() if isinstance(k, torch.Tensor) for t in s.values())


def lora_rank(args):
    """The LoRA rank on c_attn whose trainable size is closest to the mask's."""
    target = trainable(setup("from_start", args)[0])
    per_rank = args.layers * (args.width + 3 * args.width)
    return max(1, round(target / per_rank))


def setup(kind, args, data=None):
    model = gpt2(args.layers, args.width, args.seq, args.device)
    if kind == "lora":
        model = equip_lora(model, r=args.lora_rank, target_modules=["c_attn"], fan_in_fan_out=True)
        for n, p in model.named_parameters():
            p.requires_grad_("lora_" in n)
        return model, GeNAdamW(group_parameters(model), probe_every=0)
    mask = Mask(ACTIVE, 0.0, None, "manual")
    if kind == "from_start":
        mask.apply(model)
        return model, GeNAdamW(group_parameters(model), probe_every=0)
    opt = GeNAdamW(group_parameters(model), probe_every=0)
    train_steps(model, opt, data if data is not None else batches(1, args.batch, args.seq, args.device)[0], 2)
    opt.freeze(mask)
    return model, opt


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lora_rank", type=int, default=None)
    args = parser.parse_args()
    args.lora_rank = args.lora_rank or lora_rank(args)
    data = batches(1, args.batch, args.seq, args.device)[0]

    def memory_run(kind):
        def prepare():
            model, opt = setup(kind, args, data)
            train_steps(model, opt, data, 1)  # gradients and optimizer state exist
            return lambda: train_steps(model, opt, data, 4)
        return prepare

    models = {k: setup(k, args, data) for k in KINDS}
    runs = {k: (model, opt, lambda: None) for k, (model, opt) in models.items()}
    step = interleaved_step_times(runs, data, 8, args.rounds, args.device)
    print(f"model: GPT-2 {args.layers} layers, width {args.width}, batch {args.batch}x{args.seq}, device {args.device}, "
          f"torch {torch.__version__}; mask {ACTIVE}, LoRA rank {args.lora_rank} on c_attn")
    held = {k: state_bytes(m, o) for k, (m, o) in models.items()}
    print("gradient + optimizer state bytes: " + ", ".join(f"{k} {v / 2**20:.2f} MiB" for k, v in held.items()))
    print("trainable parameters: " + ", ".join(f"{k} {trainable(m)}" for k, (m, _) in models.items()))
    print(f"step time (median of {args.rounds} rounds): " + ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in step.items()))
    print(f"frozen / from_start: {step['frozen'] / step['from_start']:.3f} (target <= 1.05); "
          f"frozen / lora: {step['frozen'] / step['lora']:.3f}")
    del runs, models
    peak = {k: peak_memory(memory_run(k), args.device) for k in KINDS}
    print("peak memory: " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in peak.items()))
    print(f"peak memory frozen / from_start: {peak['frozen'] / peak['from_start']:.3f}; frozen / lora: {peak['frozen'] / peak['lora']:.3f}")


if __name__ == "__main__":
    main()
