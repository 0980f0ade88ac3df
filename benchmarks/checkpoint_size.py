"""How large is a GeNAdamW checkpoint after a long run? The probe history is bounded.

A tiny model with the seven AdaPEFT groups (lora_A, lora_B, head, norm, bias, embed, others;
parameter memory is negligible, so the sizes are GeNAdamW's own record) trained for
``--steps`` steps at the defaults (``probe_every=8``, warm-up 10). Prints the bytes of
``torch.save(opt.state_dict())`` at several steps, beside the bytes of the full log of every
probe round (what 0.1.0 kept inside each checkpoint; a user who wants it collects
``opt.last_round`` after each step, as done here).

    python -m benchmarks.checkpoint_size [--steps 100000]
"""
from __future__ import annotations

import argparse
import io
import time

import torch
from torch import nn

from gen_optim import GeNAdamW, group_parameters


class Adapter(nn.Module):
    def __init__(self, width: int, rank: int = 2):
        super().__init__()
        self.base = nn.Linear(width, width)
        self.lora_A = nn.Linear(width, rank, bias=False)
        self.lora_B = nn.Linear(rank, width, bias=False)

    def forward(self, x):
        return self.base(x) + self.lora_B(self.lora_A(x))


class Tiny(nn.Module):
    """Every AdaPEFT category, a few hundred parameters."""

    def __init__(self, vocab: int = 16, width: int = 8):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.block = Adapter(width)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 1)

    def forward(self, tokens):
        return self.head(self.norm(torch.tanh(self.block(self.embed(tokens).mean(1)))))


def saved_bytes(obj) -> int:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getbuffer().nbytes


def main():
    torch.set_num_threads(1)  # a few hundred parameters: threads only add overhead
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100_000)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = Tiny()
    g = torch.Generator().manual_seed(0)
    tokens, target = torch.randint(0, 16, (32, 4), generator=g), torch.randn(32, 1, generator=g)
    loss = lambda: nn.functional.mse_loss(model(tokens), target)  # noqa: E731
    groups = group_parameters(model)
    opt = GeNAdamW(groups, loss, lr=1e-3)
    print(f"{len(groups)} groups: {[grp['name'] for grp in groups]}; {sum(p.numel() for p in model.parameters())} "
          f"parameters; probe_every=8; torch {torch.__version__}")
    print("| steps | probe rounds | records kept | state_dict bytes | full log bytes (0.1.0's checkpoint) |")
    print("|---|---|---|---|---|")
    full_log, started = [], time.time()
    marks = {m for m in (100, 1_000, 10_000, 100_000, args.steps) if m <= args.steps}
    for step in range(1, args.steps + 1):
        opt.zero_grad()
        loss().backward()
        opt.step()
        if opt.last_round is not None and opt.last_round["step"] == step - 1:
            full_log.append(opt.last_round)
        if step in marks:
            gen = opt.state["gen"]
            print(f"| {step} | {gen['rounds']} | {len(opt.history)} | {saved_bytes(opt.state_dict()):,} | "
                  f"{saved_bytes(full_log):,} |", flush=True)
    print(f"({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
