"""The main example end to end in its offline default, single process and DDP, and resuming;
its pretrained path from local checkpoints."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from transformers import LlamaConfig, LlamaForCausalLM

from examples.e2e import DATA, read_csv, train_tokenizer
from gen_optim import Mask

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--family", "tiny", "--steps", "12", "--select_fraction", "0.5", "--batch_size", "4", "--test_rows", "64",
         "--select_probe_every", "2", "--probe_every", "2", "--eps", "0.2"]


def launch(args, out, processes=1, mixed_precision="no"):
    env = dict(os.environ, HF_HUB_OFFLINE="1", ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", ACCELERATE_MIXED_PRECISION=mixed_precision)
    script = [str(ROOT / "examples" / "gpt2_e2e.py"), *SMALL, *args, "--output_dir", str(out)]
    if processes == 1:
        cmd = [sys.executable, *script]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", mixed_precision, "--dynamo_backend", "no", *script]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def check_run_dir(out, processes):
    mask = Mask.load(out / "mask.json")
    assert mask.active and mask.fraction <= 0.2 and mask.eps == 0.2
    appi = json.loads((out / "appi.json").read_text())
    assert set(mask.active) <= {k for k, v in appi.items() if v > 0}
    assert json.loads((out / "ppi_history.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_processes"] == processes
    assert metrics["distributed_type"] == ("DistributedType.MULTI_CPU" if processes > 1 else "DistributedType.NO")
    names = [run["name"] for run in metrics["runs"]]
    assert names == ["selected", "bitfit"]
    for run in metrics["runs"]:
        assert math.isfinite(run["perplexity"]) and 1 < run["perplexity"] < 1e4 and 0 < run["fraction"] <= 1
    for png in ("ppi_heatmap.png", "appi.png", "frontier.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / png).stat().st_size > 10_000


@pytest.mark.parametrize("processes", [1, 2])
def test_example_end_to_end(tmp_path, processes):
    stdout = launch(["--peft", "bitfit", "linear_probe"], tmp_path, processes)
    assert "RANDOMLY INITIALISED" in stdout and "linear_probe: skipped" in stdout
    assert "| selected |" in stdout and "mechanics only, not a fine-tuning result" in stdout
    # one process on one thread (OMP_NUM_THREADS=1, as `accelerate launch` sets it) is told how to use the rest
    one_thread = processes == 1 and len(os.sched_getaffinity(0)) > 1
    assert ("--num_cpu_threads_per_process" in stdout) == one_thread
    check_run_dir(tmp_path, processes)


def test_example_from_local_pretrained_checkpoints(tmp_path):
    """``--small/--large`` as a local causal-LM checkpoint (a Llama and its tokenizer in a folder):
    loaded through AutoModelForCausalLM, cut to their first blocks, LoRA on peft's targets; the
    fixed masks it lacks (BitFit: Llama has no biases) are skipped and said so in the table."""
    checkpoint = tmp_path / "llama"
    tokenizer = train_tokenizer(read_csv(DATA / "train.csv"))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_attention_heads=4,
                         num_key_value_heads=2, num_hidden_layers=3, max_position_embeddings=128,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    out = tmp_path / "run"
    stdout = launch(["--small", str(checkpoint), "--large", str(checkpoint), "--small_blocks", "1",
                     "--large_blocks", "2", "--peft", "lora", "bitfit"], out)
    assert "LlamaForCausalLM with 1 blocks (cut" in stdout and "LlamaForCausalLM with 2 blocks (cut" in stdout
    assert "RANDOMLY INITIALISED" not in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert [run["name"] for run in metrics["runs"]] == ["selected", "lora"] and set(metrics["skipped"]) == {"bitfit"}
    table = [line for line in stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| mask |") and any(line.startswith("| lora | lora_A+lora_B |") for line in table)
    assert any(line.startswith("| bitfit | skipped") for line in table)
    for run in metrics["runs"]:
        assert math.isfinite(run["perplexity"]) and 1 < run["perplexity"]


def test_example_under_bf16_mixed_precision(tmp_path):
    """The closure-in-constructor path (replay_closure) under Accelerate's bf16 autocast."""
    stdout = launch(["--peft", "bitfit"], tmp_path, mixed_precision="bf16")
    assert "mixed precision bf16" in stdout
    check_run_dir(tmp_path, 1)


def test_plots_redraw_from_the_run_dir(tmp_path):
    launch(["--select_only"], tmp_path)
    (tmp_path / "frontier.png").unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, "-m", "gen_optim.plots", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "frontier.png").stat().st_size > 10_000


def test_resume_gives_the_same_appi(tmp_path):
    launch(["--select_only"], tmp_path / "straight")
    stopped = tmp_path / "resumed"
    assert "resume with --resume" in launch(["--select_only", "--stop_after", "3"], stopped)
    assert not (stopped / "appi.json").exists()
    assert "resumed Part I at step 3" in launch(["--select_only", "--resume"], stopped)
    straight = json.loads((tmp_path / "straight" / "appi.json").read_text())
    assert json.loads((stopped / "appi.json").read_text()) == straight and any(straight.values())


def test_sst2_trainer_example(tmp_path):
    """The Trainer example on its tiny offline model: selection, dev accuracy, the shipped subset."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("ACCELERATE_MIXED_PRECISION", None)
    cmd = [sys.executable, str(ROOT / "examples" / "sst2_trainer.py"), "--model", "tiny", "--max_steps", "20",
           "--eps", "0.05", "--output_dir", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "RANDOMLY INITIALISED" in proc.stdout
    mask = Mask.load(tmp_path / "mask.json")
    assert mask.active and mask.fraction <= 0.05
    accuracy = float(proc.stdout.split("dev accuracy ")[1].split()[0])
    assert 0.0 <= accuracy <= 1.0
    percent = float(proc.stdout.split("bytes of weights, ")[1].split("%")[0])
    assert 0 < percent <= 100 * 0.05 + 0.5  # the subset's weights are about the mask's fraction of the model
    assert (tmp_path / "subset" / "subset.safetensors").exists() and Mask.load(tmp_path / "subset" / "mask.json") == mask
