"""The real-model benchmark harness: its rankings, masks, schedules and curves against brute
force and closed forms, and the Table 3, Table 4, cuts and learning-rate-free scripts end to
end in their --quick mode (a tiny random BERT or Llama, offline)."""
import itertools
import json
import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import budget as budget_module
from benchmarks.harness import FULL_FRACTION, curve, frontier_gap, kendall_tau, masks, random_mask
from benchmarks.optimizers import WARMUP_FRACTION, Optimizer, Schedule
from gen_optim.mask import propose
from gen_optim.rule import STEP_FORWARDS

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


def quick_benchmark(module, *args, timeout=600, check=True):
    """``python -m benchmarks.MODULE --quick [args]``, offline; with ``check``, it must succeed."""
    done = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", "--quick", *args], cwd=ROOT,
                          env=os.environ | {"HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def quick_run(module, out, *extra, timeout=600):
    """A ledger benchmark's ``--quick`` run into ``out``; must succeed."""
    return quick_benchmark(module, "--out", str(out), *extra, timeout=timeout)


def test_frontier_gap_against_brute_force():
    # a closed form first: greedy takes a (ratio 2) then b; at budget 20 the exact optimum is b + c
    gap = frontier_gap({"a": 2.0, "b": 1.5, "c": 1.5}, {"a": 1, "b": 10, "c": 10})
    at_20 = next(g for g in gap if sorted(g.exact.groups) == ["b", "c"])
    assert at_20.greedy.groups == ("a", "b") and at_20.ratio == pytest.approx(17 / 30)
    rng = random.Random(0)
    for _ in range(20):
        names = [f"g{k}" for k in range(rng.randint(2, 7))]
        sizes = {n: rng.randint(1, 50) for n in names}
        scores = {n: rng.choice([0.0, rng.random()]) for n in names}
        value = lambda s: sum(scores[n] * sizes[n] for n in s)  # noqa: E731
        weight = lambda s: sum(sizes[n] for n in s)  # noqa: E731
        subsets = [c for k in range(len(names) + 1) for c in itertools.combinations(names, k)]
        order = sorted(names, key=lambda n: (-scores[n], sizes[n], names.index(n)))
        prefixes = [order[:k] for k in range(len(names) + 1)]
        for g in frontier_gap(scores, sizes):
            budget = weight(g.exact.groups)
            assert g.exact.value == pytest.approx(max(value(s) for s in subsets if weight(s) <= budget))
            best_prefix = [p for p in prefixes if weight(p) <= budget][-1]
            assert sorted(g.greedy.groups) == sorted(best_prefix)
            assert 0.0 <= g.ratio <= 1.0 + 1e-12
        assert all(g.exact.value > 0 for g in frontier_gap(scores, sizes))


def test_table3_quick_end_to_end(tmp_path):
    out = tmp_path / "runs.jsonl"
    done = quick_run("table3_sst2", out)
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    for row in ("BitFit", "LoRA", "LayerNorm", "Linear probing", "Full fine-tuning", "Gradient score", "Random",
                "Selected set 1"):
        assert any(line.startswith(f"| {row}") for line in table), row
    # each heuristic and the selected set at the budget, tuned on the grid
    assert sum("| AdamW " in line for line in table) == 6
    assert any(line.startswith("| Selected set") and "(eps) | AdamW" in line for line in table)
    assert sum(line.startswith(("| category (", "| layer (")) for line in table) == 2  # greedy against exact
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["key"]["kind"] for r in rows} == {"select", "train"}
    trained = [r for r in rows if r["key"]["kind"] == "train"]
    assert all(0.0 <= r["metric"] <= 1.0 and 0.0 < r["fraction"] <= 1.0 for r in trained)
    assert len({json.dumps(r["key"], sort_keys=True) for r in rows}) == len(rows)  # each run once
    again = quick_run("table3_sst2", out, "--report", timeout=300)
    assert len(out.read_text().splitlines()) == len(rows)  # nothing retrained
    assert [line for line in again.stdout.splitlines() if line.startswith("| ")][:len(table)] == table[:len(table)]
    # GeNAdamW's settings are part of its runs' keys: the default runs do not stand in for a fixed interval
    assert not any("gen" in r["key"] for r in rows)
    other = quick_benchmark("table3_sst2", "--out", str(out), "--report", "--probe_every", "8", timeout=300, check=False)
    assert other.returncode != 0 and "'probe_every': 8" in other.stderr and "has not run yet" in other.stderr


def test_table4_quick_end_to_end(tmp_path):
    out = tmp_path / "runs.jsonl"
    first = quick_run("table4_e2e", out)
    # every greedy set of the tiny model trains more than FULL_FRACTION of it: without --all_sets none trains
    sets = {k: v for k, v in table_rows(first.stdout).items() if k.startswith("Selected set")}
    assert sets and all(v[0].startswith("not run") and float(v[-2]) > 100 * FULL_FRACTION for v in sets.values())
    # without --algorithm1 the large model (2 blocks) has no Part I of its own, and the output says so
    assert "Algorithm 1 (Part I on the large model) not run" in first.stdout
    before = out.read_text().splitlines()
    assert [k["blocks"] for k in (json.loads(line)["key"] for line in before) if k["kind"] == "select"] == [1]
    done = quick_run("table4_e2e", out, "--all_sets", "--algorithm1")
    lines = done.stdout.splitlines()
    table = [line for line in lines if line.startswith("| ")]
    rows = table_rows(done.stdout)
    assert all(rows[k][0].startswith("GeNAdamW from") for k in sets)
    assert "Kendall tau of the two APPI rankings" in done.stdout and "not run" not in done.stdout
    added = [json.loads(line)["key"] for line in out.read_text().splitlines()[len(before):]]
    # only the sets trained, Part I ran on the large model, and its own set trained where it differs
    assert [k["blocks"] for k in added if k["kind"] == "select"] == [2]
    trains = [k for k in added if k["kind"] == "train"]
    # (the large model's own set adds a run unless an earlier row trained the same groups: one key)
    assert len(sets) <= len(trains) <= len(sets) + 1 and all(k["groups"] for k in trains)
    own = table_rows(done.stdout.partition("## Generation")[0]).get("Selected on the large model (eps)")
    assert own is None or own[0].startswith("GeNAdamW from")
    for row in ("No fine-tuning", "Selected set 1", "LoRA", "LoRA-FA", "LayerNorm", "Full fine-tuning"):
        assert any(line.startswith(f"| {row} |") for line in table), row
    assert any(line.startswith("| BitFit | not applicable: the model has no bias") for line in table)
    assert sum("| AdamW " in line for line in table) == 2  # LoRA tuned on the grid, in both tables
    generation = lines[lines.index(next(line for line in lines if line.startswith("## Generation"))) + 2]
    assert generation.split(" | ")[2:7] == ["BLEU", "NIST", "METEOR", "ROUGE-L", "CIDEr"]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    trained = [r for r in rows if r["key"]["kind"] == "train"]
    assert {r["key"]["kind"] for r in rows} == {"select", "train", "pretrained"}
    assert all(r["metric"] > 1.0 and math.isfinite(r["metric"]) and 0.0 < r["fraction"] <= 1.0 for r in trained)
    scored = [r for r in trained if r["scores"]]
    assert scored and all(0.0 <= r["scores"]["BLEU"] <= 100.0 and 0.0 <= r["scores"]["ROUGE-L"] <= 1.0 for r in scored)
    assert len({json.dumps(r["key"], sort_keys=True) for r in rows}) == len(rows)  # each run once
    again = quick_run("table4_e2e", out, "--report", timeout=300)  # without --all_sets: the sets from the ledger
    assert len(out.read_text().splitlines()) == len(rows)  # nothing retrained
    assert [line for line in again.stdout.splitlines() if line.startswith("| ")] == table


def test_cuts_quick():
    done = quick_benchmark("cuts", timeout=300)
    rows = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r[1].split(":")[0] for r in rows] == ["all", "first", "first + last 2", "evenly spread"]
    assert all(float(r[2].rstrip(" |")) > 1.0 for r in rows)


def test_fit_verdicts_quick():
    """The verdict counts per group (through the SST-2 task of Table 3): every group of the
    AdaPEFT categories, each round judged once, a fitted rate and APPI for each."""
    done = quick_benchmark("fit_verdicts", "--lrs", "1e-3", timeout=300)
    rows = [line.strip("| ").split(" | ") for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    header, body = rows[0], rows[1:]
    assert header[1:8] == ["accepted", "unresolved", "climb", "concave", "poor", "flat", "nonfinite"]
    assert {r[0] for r in body} == {"head", "norm", "bias", "embed", "others"}
    # each of a group's rounds is judged once: the verdicts add up to its rounds (12 steps at the
    # defaults: the first round, then those the budget gives it)
    assert all(sum(int(x) for x in r[1:8]) == int(r[10]) and 1 <= int(r[10]) <= 12 for r in body)
    assert all(float(r[8]) >= 0.0 and float(r[9]) > 0.0 for r in body)
    assert "dev accuracy" in done.stdout


def test_resolution_quick():
    """Every group at every probe step in both precisions; float64's B is the same at every
    step (the loss is quadratic there), and at the smallest step float32 cannot resolve it."""
    etas = ["1e-05", "1e-04", "1e-03"]
    done = quick_benchmark("resolution", "--at", "3", "--etas", *etas, timeout=300)
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in done.stdout.splitlines()
            if line.startswith("| ") and "---" not in line][1:]
    groups = ["head", "norm", "bias", "embed", "others"]
    assert [(r[0], r[1], r[2]) for r in rows] == [(g, f"{float(e):.0e}", p) for g in groups for e in etas
                                                  for p in ("float32", "float64")]
    for g in groups:
        b64 = [float(r[4]) for r in rows if r[0] == g and r[2] == "float64"]
        assert max(b64) - min(b64) <= 0.05 * max(abs(b) for b in b64) + 1e-9
    assert any(r[1] == "1e-05" and r[2] == "float32" and r[6] == "no" for r in rows)
    assert any(r[6] == "yes" and r[7] == "accepted" for r in rows)


def table_rows(text):
    """The rows of the markdown table(s) in ``text``, by first cell."""
    return {r[0]: r[1:] for r in ([c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
                                  if line.startswith("| ") and "---" not in line)}


def test_overhead_quick():
    """The cost benchmark end to end on a tiny GPT-2: the step-time lines, ``opt.step()`` alone,
    and a whole-run row per variant whose compute fraction is its forwards / ``STEP_FORWARDS``."""
    out = quick_benchmark("overhead", "--warmup_ablation", "--count_ablation", "--budget_ablation", "--gift_ablation").stdout
    assert "GeNAdamW probing off / AdamW" in out and "opt.step() alone between rounds" in out
    rows = re.findall(r"^  (GeNAdamW[^:]*): .* ratio ([\d.]+) .*, paired ([\d.]+); ([\d.]+) probe forwards per step, "
                      r"a compute fraction of ([\d.]+)$", out, flags=re.MULTILINE)
    assert [row[0] for row in rows] == ["GeNAdamW at its defaults", "GeNAdamW, warmup=10 (the earlier default)",
                                        "GeNAdamW, a step counted as 3 forwards (before)",
                                        "GeNAdamW, probe_budget=0.1 (the earlier default)",
                                        "GeNAdamW, the starting credit a gift (before)"]
    for _, ratio, paired, forwards, fraction in rows:
        assert float(ratio) > 0 and float(paired) > 0 and float(forwards) > 0
        # printed to 3 decimals each
        assert float(fraction) == pytest.approx(float(forwards) / STEP_FORWARDS, abs=0.0005 / STEP_FORWARDS + 0.0005)


def test_overhead_paired_ratio_counts_only_what_differs_inside_the_step():
    """A paired ratio takes the AdamW run beside it, less its ``opt.step()`` time, plus the
    variant's: 10 s with 1 s inside against 2.5 s inside is 1.15, whatever the variant's own
    wall time (its forward and backward are the AdamW run's work again)."""
    from benchmarks.overhead import paired_ratios

    seconds = {"AdamW": [10.0, 20.0], "gen": [99.0, 0.0]}
    in_step = {"AdamW": [1.0, 2.0], "gen": [2.5, 4.0]}
    assert paired_ratios(seconds, in_step, "gen") == pytest.approx([1.15, 1.1])


def test_budget_quick(tmp_path, capsys):
    """The probe budget's benchmark end to end: AdamW probes nothing; the budget's warm-up
    forwards are part of its probe forwards, and its compute fraction is theirs /
    ``STEP_FORWARDS``; the earlier default warm-up (``--warmup_ablation``) spends more before it
    settles; the earlier count of a step (``--count_ablation``) and the earlier budget
    (``--budget_ablation``) have their rows, and the starting credit as a gift
    (``--gift_ablation``) probes at least as much as the loan; on SST-2
    the budget and the unlimited rule each train once, resumed from the ledger on a rerun."""
    out = tmp_path / "budget_sst2.jsonl"
    done = quick_benchmark("budget", "--no-grid", "--warmup_ablation", "--count_ablation", "--budget_ablation",
                           "--gift_ablation", "--sst2_out", str(out))
    stability, _, quality = done.stdout.partition("full fine-tuning, 16 steps")
    rows = table_rows(stability)
    header = rows.pop("config")
    assert list(rows) == ["adamw 1e-3", "budget 0.05 from 0.001", "unlimited from 0.001", "warmup 10 from 0.001",
                          "step as 3 forwards from 0.001", "budget 0.1 (before) from 0.001",
                          "credit a gift (before) from 0.001"]
    col = {name: header.index(name) for name in ("probe forwards / step", "compute fraction", "warm-up forwards")}
    adamw, budget = rows["adamw 1e-3"], rows["budget 0.05 from 0.001"]
    assert float(adamw[col["probe forwards / step"]]) == 0.0 and adamw[col["warm-up forwards"]] == ""
    for row in (budget, rows["step as 3 forwards from 0.001"], rows["budget 0.1 (before) from 0.001"]):
        forwards = float(row[col["probe forwards / step"]])
        # printed to 2 and 3 decimals: forwards / STEP_FORWARDS is off by up to 0.005 / STEP_FORWARDS, the fraction by 0.0005
        assert float(row[col["compute fraction"]]) == pytest.approx(
            forwards / STEP_FORWARDS, abs=0.005 / STEP_FORWARDS + 0.0005 + 1e-9)
    forwards = float(budget[col["probe forwards / step"]])
    assert float(rows["credit a gift (before) from 0.001"][col["probe forwards / step"]]) >= forwards
    assert 0 < int(budget[col["warm-up forwards"]]) <= forwards * 40 + 0.5  # 40 steps in --quick
    # the earlier default's warm-up probes every group in each of its first rounds: it costs more
    assert int(rows["warmup 10 from 0.001"][col["warm-up forwards"]]) > int(budget[col["warm-up forwards"]])
    # the APPI ranking against the unlimited rule's, where Part I selects (step 4 of 40) and at the end
    taus = [float(budget[header.index(name)]) for name in ("APPI tau vs unlimited at step 4", "at the end")]
    assert all(-1.0 <= t <= 1.0 for t in taus)
    assert "Kendall tau at step 1 (Part I's selection)" in done.stdout  # SST-2: 16 steps in --quick
    quality_rows = table_rows(quality)
    assert list(quality_rows) == ["start", "0.001"]
    budget, unlimited = (float(c.partition(" ")[0]) for c in quality_rows["0.001"][:2])
    assert 0 <= budget <= 100 and 0 <= unlimited <= 100
    ledger = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["key"].get("gen") for row in ledger] == [None, {"probe_budget": 1e9}]
    budget_module.sst2_quality(out, [0], quick=True)  # a rerun reads the ledger: nothing trains again
    assert table_rows(capsys.readouterr().out.partition("full fine-tuning, 16 steps")[2]) == quality_rows
    assert len(out.read_text().splitlines()) == 2


def test_schedule_factors():
    steps = 200
    warm = round(WARMUP_FRACTION * steps)
    constant = [Schedule.CONSTANT.factor(t, steps) for t in range(steps)]
    cosine = [Schedule.COSINE.factor(t, steps) for t in range(steps)]
    assert constant == [1.0] * steps
    assert cosine[:warm] == pytest.approx([(t + 1) / warm for t in range(warm)])  # linear warm-up to 1
    assert cosine[warm] == 1.0 and cosine[warm + (steps - warm) // 2] == pytest.approx(0.5)
    assert all(a > b for a, b in zip(cosine[warm:], cosine[warm + 1:]))  # then strictly down
    assert 0.0 < cosine[-1] < 1e-3


def test_curve_means_equal_spans():
    rng = random.Random(1)
    for n in (1, 5, 20, 21, 203):
        losses = [rng.random() for _ in range(n)]
        points = curve(losses)
        assert len(points) == min(20, n)
        # every loss falls in exactly one span: the spans' weighted means give the overall mean back
        bounds = [round(k * n / len(points)) for k in range(len(points) + 1)]
        assert bounds[0] == 0 and bounds[-1] == n and all(b > a for a, b in zip(bounds, bounds[1:]))
        weighted = sum(p * (b - a) for p, a, b in zip(points, bounds, bounds[1:])) / n
        assert weighted == pytest.approx(sum(losses) / n)
        assert points[0] == pytest.approx(sum(losses[: bounds[1]]) / bounds[1])


def test_lr_free_quick_end_to_end(tmp_path):
    out = tmp_path / "runs.jsonl"
    done = quick_run("lr_free", out, timeout=900)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    for schedule in Schedule:
        ran = [r for r in rows if r["key"]["schedule"] == schedule.value]
        assert {r["key"]["optimizer"] for r in ran} == {o.value for o in Optimizer}
        assert len(ran) == 5 + 3 + 3 + 3 + 3  # the AdamW grid, 2 GeNAdamWs and GeN's reference from 3 starts, 3 peers
        assert all(0.0 <= r["metric"] <= 1.0 and math.isfinite(r["train_loss"]) and len(r["curve"]) == 16 for r in ran)
        gen = [r for r in ran if r["key"]["optimizer"] in (Optimizer.GEN.value, Optimizer.GEN_FRESH.value)]
        assert len(gen) == 6 and all(r["rounds"] for r in gen)
        assert all(set(r["rates"]) == {"head", "norm", "bias", "embed", "others"} for r in gen)
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert sum("(best)" in line for line in table) == 2  # one best AdamW per schedule
    assert done.stdout.count("Goal (GeNAdamW") == 2
    again = quick_run("lr_free", out, "--report", timeout=300)
    assert len(out.read_text().splitlines()) == len(rows)  # nothing retrained
    assert [line for line in again.stdout.splitlines() if line.startswith("| ")] == table


def test_lr_free_e2e_quick(tmp_path):
    """The second task: LoRA + everything trainable on a causal LM, perplexity (lower is better)."""
    out = tmp_path / "runs.jsonl"
    done = quick_run("lr_free", out, "--task", "e2e", "--schedules", "constant", timeout=900)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["key"]["optimizer"] for r in rows} == {o.value for o in Optimizer} and len(rows) == 5 + 3 + 3 + 3 + 3
    assert all({"lora_A", "lora_B", "norm", "embed", "others"} <= set(r["run"]["groups"]) for r in rows)
    assert all(r["fraction"] == 1.0 and r["metric"] > 1.0 and math.isfinite(r["metric"]) for r in rows)
    gen = [r for r in rows if r["key"]["optimizer"] == Optimizer.GEN.value]
    assert all({"lora_A", "lora_B"} <= set(r["rates"]) for r in gen)
    # the best AdamW is the one with the lowest perplexity, and the goal is judged that way
    adamw = {r["key"]["lr"]: r["metric"] for r in rows if r["key"]["optimizer"] == Optimizer.ADAMW.value}
    best = min(adamw, key=adamw.get)
    table = table_rows(done.stdout)
    assert [k for k, v in table.items() if "(best)" in k] == [f"AdamW {best:g} (best)"]
    worst = max(r["metric"] for r in gen)  # the goal judges GeNAdamW as shipped, not the fresh-batch variant
    assert f"worst start {worst:.2f} (" in done.stdout and "## LoRA + everything of tiny-llama-2 on E2E" in done.stdout
    # a plot of every schedule draws a panel only for the one with runs (the ledger has no cosine runs)
    plot = out.parent / "plot.png"
    quick_run("lr_free", out, "--task", "e2e", "--report", "--plot", str(plot), timeout=300)
    import matplotlib.image

    assert matplotlib.image.imread(plot).shape[1] == 6 * 120  # one panel 6 inches wide at 120 dpi, not two
