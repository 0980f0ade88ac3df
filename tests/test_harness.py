"""The real-model benchmark harness: its rankings and masks against brute force, and the
Table 3 script end to end in its --quick mode (a tiny random BERT, offline)."""
import itertools
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.harness import kendall_tau, masks, random_mask
from gen_optim.mask import propose

ROOT = Path(__file__).resolve().parents[1]


def tau_by_definition(a, b):
    """Kendall's tau-b written from its definition, over all pairs."""
    names = sorted(a)
    pairs = list(itertools.combinations(names, 2))
    sign = lambda x: (x > 0) - (x < 0)  # noqa: E731
    s = [(sign(a[m] - a[n]), sign(b[m] - b[n])) for m, n in pairs]
    n0 = len(pairs)
    n1 = sum(x == 0 for x, _ in s)
    n2 = sum(y == 0 for _, y in s)
    return sum(x * y for x, y in s) / math.sqrt((n0 - n1) * (n0 - n2))


def test_kendall_tau_against_its_definition():
    rng = random.Random(0)
    for _ in range(50):
        names = [f"g{i}" for i in range(rng.randint(3, 9))]
        a = {n: rng.choice([0.0, 1.0, 2.0, rng.random()]) for n in names}
        b = {n: rng.choice([0.0, 3.0, rng.random()]) for n in names}
        if len(set(a.values())) < 2 or len(set(b.values())) < 2:
            continue
        assert kendall_tau(a, b) == pytest.approx(tau_by_definition(a, b))
    a = {"x": 1.0, "y": 2.0, "z": 3.0}
    assert kendall_tau(a, a) == 1.0 and kendall_tau(a, {k: -v for k, v in a.items()}) == -1.0
    assert math.isnan(kendall_tau(a, {k: 0.0 for k in a}))


def test_masks_and_random_mask():
    sizes = {"head": 10, "norm": 30, "bias": 60, "others": 900}
    scores = {"head": 5.0, "norm": 1.0, "bias": 2.0, "others": 0.1}
    chain, chosen = masks(scores, sizes, eps=0.1)
    assert [set(c) for c in chain] == [{"head"}, {"head", "bias"}, {"head", "bias", "norm"}, set(sizes)]
    assert chosen == propose(scores, sizes, 0.1).active and set(chosen) == {"head", "bias", "norm"}
    draws = {random_mask(sizes, 0.05, seed) for seed in range(40)}
    assert draws == {("head",), ("norm",), ("head", "norm")}  # every feasible set, nothing else
    assert random_mask(sizes, 0.05, 3) == random_mask(sizes, 0.05, 3)


def test_table3_quick_end_to_end(tmp_path):
    out = tmp_path / "runs.jsonl"
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "benchmarks.table3_sst2", "--quick", "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    for row in ("BitFit", "LoRA", "LayerNorm", "Linear probing", "Full fine-tuning", "Gradient score", "Random",
                "Selected set 1"):
        assert any(line.startswith(f"| {row}") for line in table), row
    assert sum("| AdamW " in line for line in table) == 5  # each heuristic, tuned on the grid
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["key"]["kind"] for r in rows} == {"select", "train"}
    trained = [r for r in rows if r["key"]["kind"] == "train"]
    assert all(0.0 <= r["metric"] <= 1.0 and 0.0 < r["fraction"] <= 1.0 for r in trained)
    assert len({json.dumps(r["key"], sort_keys=True) for r in rows}) == len(rows)  # each run once
    again = subprocess.run(command + ["--report"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and len(out.read_text().splitlines()) == len(rows)  # nothing retrained
    assert [line for line in again.stdout.splitlines() if line.startswith("| ")][:len(table)] == table[:len(table)]
