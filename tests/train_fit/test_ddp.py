"""Two-process CPU DDP (gloo) through torchrun: ranks end with identical parameters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from train.data.cache import PreparedCache


def test_torchrun_two_ranks_agree(rsna_cache: PreparedCache, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "train",
        "fit",
        "--config",
        "phantom_demo",
        f"data.cache={rsna_cache.root}",
        f"run.out={out}",
        "run.device=cpu",
        "data.size=32",
        "data.window=4",
        "data.studies_per_batch=2",
        "data.workers=0",
        "data.split=kfold",
        "data.n_folds=4",
        "model.lstm_hidden=16",
        "optim.epochs=1",
        "optim.accumulation=1",
        "run.max_steps_per_epoch=2",
        "augment.cutmix_p=1.0",
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=300, cwd=Path(__file__).parents[2]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    digests = result["rank_digests"]
    assert len(digests) == 2
    assert digests[0] == digests[1]
    assert result["steps"] == 2
    # only rank 0 wrote the run's files, once
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["best.pt", "config.yaml", "curves.png", "last.pt", "metrics.csv", "split.json", "state.pt"]
    )
    cfg = (out / "config.yaml").read_text()
    assert "size: 32" in cfg
