"""Duplex training under Lightning DDP on 2 CPU processes (gloo) over the sharded token store: each rank trains on
its own disjoint share of the windows (tensors built in a loader worker per rank), the store is built once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import duplex_fit_args

from mmduplex.lm.bundle import read_checkpoint
from mmduplex.train.duplex_datamodule import WindowDataset, WindowSampler

STEPS, BATCH = 3, 8


def test_ddp_ranks_train_on_disjoint_windows_from_the_token_shards(duplex_data, tmp_path):
    tests = Path(__file__).parent
    argv = duplex_fit_args(
        duplex_data,
        tmp_path,
        "--data.init_args.window_s=4.0",
        f"--data.init_args.batch_size={BATCH}",
        "--data.init_args.num_workers=1",
        f"--data.init_args.tokens={tmp_path / 'tokens'}",
        "--data.init_args.token_shard_mb=0.3",  # several shards
        "--trainer.limit_val_batches=0",
        "--trainer.logger=false",
        f"--trainer.max_steps={STEPS}",
        "--trainer.strategy=ddp",
        "--trainer.devices=2",
        "--trainer.accelerator=cpu",
        "--trainer.callbacks+=window_recorder.WindowRecorder",
        f"--trainer.callbacks.out={tmp_path / 'seen'}",
    )
    # one thread per process: two multi-threaded processes on two cores spin against each other
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "mmduplex", *argv], env=env, capture_output=True, timeout=900,
                            cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    ranks = [json.loads((tmp_path / "seen" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world"] == 2 for r in ranks)
    assert ranks[0]["store"] == ranks[1]["store"] == str(tmp_path / "tokens") and ranks[0]["shards"] > 1
    seen = [[i for batch in r["batches"] for i in batch] for r in ranks]
    assert all(len(r["batches"]) == STEPS for r in ranks)
    assert not set(seen[0]) & set(seen[1]), "the ranks trained on the same windows"
    dataset = WindowDataset([{}] * ranks[0]["samples"])
    for rank, windows in enumerate(seen):  # exactly this rank's share of epoch 0's shuffled order
        sampler = WindowSampler(dataset, num_replicas=2, rank=rank, seed=0)
        sampler.set_epoch(0)
        assert windows == list(sampler)[: len(windows)]
    checkpoint = next(tmp_path.rglob("*.ckpt"))
    assert read_checkpoint(checkpoint)["global_step"] == STEPS
