"""GeNAdamW under FSDP2 on 2 CPU ranks agrees with one process on the same global batches."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent


def run(out, processes):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    script = [str(HERE / "fsdp_train.py"), str(out)]
    cmd = [sys.executable, *script] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), *script]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(out.read_text())


def test_fsdp2_matches_one_process(tmp_path):
    alone, sharded = run(tmp_path / "alone.json", 1), run(tmp_path / "fsdp.json", 2)
    # the LayerNorm belongs to the root module, which keeps its weights gathered after forward
    assert any(r["norm"] is None for r in sharded["reasons"] if "norm" in r)
    assert sharded["reasons"] == alone["reasons"]
    assert sharded["rates"] == pytest.approx(alone["rates"], rel=1e-9)
    assert sharded["appi"] == pytest.approx(alone["appi"], rel=1e-9)
    # the progress test sums g . d over the ranks' shards: one process's whole tensors give the same
    assert sharded["progress"] == {k: pytest.approx(v, rel=1e-9) for k, v in alone["progress"].items()}
    assert sharded["progress"]["others"][2] == 19 and sharded["progress"]["bias"][2] == 9  # bias frozen at step 10
    assert sharded["sizes"] == alone["sizes"] == {"norm": 64, "bias": 65, "others": 1312}  # global, not local
    for a, b in zip(alone["weights"], sharded["weights"]):
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=0, atol=1e-10)
    frozen = [not t for t in sharded["trainable"]]
    assert any(frozen) and sharded["trainable"] == alone["trainable"]
    assert not any(s for s, f in zip(sharded["state"], frozen) if f)  # no AdamW state for frozen groups
    assert not any(g for g, f in zip(sharded["grads"], frozen) if f)  # and no gradients
    assert sharded["applied"] == alone["applied"] and sharded["applied"][0] == pytest.approx(65 / 1441)
