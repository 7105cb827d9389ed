"""Duplex training: the tiny recipe learns, DDP on 2 CPU processes runs, a killed run resumes exactly."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import duplex_fit_args, one_torch_thread
from safetensors.torch import load_file, save_file

from mmduplex.errors import InputError
from mmduplex.lm.bundle import read_checkpoint
from mmduplex.train.duplex_datamodule import BusyWindowSampler, WindowDataset, WindowSampler, busy_share, clip_windows
from mmduplex.train.lightning_cli import run_cli

SMALL = (  # a lighter variant of the tiny recipe for the subprocess tests: short windows, small batches
    "--data.init_args.window_s=4.0",
    "--data.init_args.batch_size=8",
    "--trainer.limit_val_batches=0",
    "--trainer.logger=false",
)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    with one_torch_thread():
        yield


def mmduplex_command() -> list[str]:
    script = Path(sys.executable).with_name("mmduplex")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "mmduplex"]


def subprocess_env(threads: int | None = None) -> dict[str, str]:
    """The environment of a child run: this process's thread count unless given (results depend on it)."""
    threads = threads or torch.get_num_threads()
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}


def test_tiny_recipe_loss_falls(tiny_duplex_run):
    with open(tiny_duplex_run["metrics"], newline="") as handle:
        losses = [float(row["train/loss"]) for row in csv.DictReader(handle) if row.get("train/loss")]
    assert len(losses) == 48
    assert sum(losses[-8:]) / 8 < 0.5 * losses[0], f"loss {losses[0]:.3f} -> {losses[-8:]}"
    data = tiny_duplex_run["module"].trainer.datamodule
    assert data.grid is not None and len(data.store) > 0  # windows came from the workers' path, tokens stored once


def test_window_offsets_and_sampler_order():
    assert clip_windows(3.0, 10.0, 5.0) == [0.0]
    assert clip_windows(22.0, 10.0, 5.0) == [0.0, 5.0, 10.0, 12.0]
    dataset = WindowDataset([{}] * 10)
    a, b = WindowSampler(dataset, 2, 0, seed=3), WindowSampler(dataset, 2, 1, seed=3)
    a.set_epoch(1)
    b.set_epoch(1)
    first, second = list(a), list(b)
    assert sorted(first + second) == list(range(10)) and len(a) == 5
    again = WindowSampler(dataset, 2, 0, seed=3)
    again.set_epoch(1)
    again.resume(1, 2)
    assert list(again) == first[2:] and len(again) == 5
    again.set_epoch(2)
    assert len(list(again)) == 5  # skipping applies to the resumed epoch only


def test_busy_windows_are_drawn_in_proportion_to_their_weight():
    dataset = WindowDataset([{}] * 4)
    weights = [1.0, 1.0, 1.0, 9.0]
    a, b = (BusyWindowSampler(dataset, 2, rank, seed=3, weights=weights) for rank in (0, 1))
    a.set_epoch(1)
    b.set_epoch(1)
    first = list(a)
    assert first == list(a) and len(first) == len(list(b)) == 2  # seeded by (seed, epoch); an epoch's share a rank
    counts = torch.zeros(4)
    for epoch in range(500):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        for i in [*a, *b]:
            counts[i] += 1
    assert counts.sum() == 2000 and 0.70 < counts[3] / 2000 < 0.80  # 9 / 12 = 0.75
    again = BusyWindowSampler(dataset, 2, 0, seed=3, weights=weights)
    again.set_epoch(1)
    again.resume(1, 1)
    assert list(again) == first[1:]
    with pytest.raises(InputError, match="one positive weight per window"):
        BusyWindowSampler(dataset, 1, 0, seed=0, weights=[1.0, 0.0, 1.0, 1.0])
    # the share of frames with two or more flow tokens (keyframes aside), inside the window only
    kinds, counts_, times = [0, 1, 1, 1, 3, 1], [8, 2, 1, 3, 2, 5], [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert busy_share(times, counts_, kinds, 0.0, 1.0) == pytest.approx(2 / 5)
    assert busy_share(times, counts_, kinds, 0.5, 2.0) == pytest.approx(2 / 3)
    assert busy_share(times, counts_, kinds, 3.0, 4.0) == 0.0


def test_busy_window_weight_draws_busy_windows_more_often(tiny_duplex_run):
    data = tiny_duplex_run["module"].trainer.datamodule
    shares = torch.tensor(data.busy_shares())
    assert len(shares) == len(data.train_samples) and 0 < shares.max() <= 1 and shares.min() >= 0
    plain, store = data.busy_window_weight, data.store
    try:
        data.busy_window_weight = 20.0
        sampler = data.train_dataloader().sampler
        assert isinstance(sampler, BusyWindowSampler)
        drawn = []
        for epoch in range(20):
            sampler.set_epoch(epoch)
            drawn += list(sampler)
        weights = 1 + 20.0 * shares
        expected = float((weights * shares).sum() / weights.sum())  # the mean busy share of a weighted draw
        assert expected > float(shares.mean()) + 0.01
        assert abs(float(shares[drawn].mean()) - expected) < 0.01
        data.store = None
        with pytest.raises(InputError, match="needs the token store"):
            data.train_dataloader()
    finally:
        data.busy_window_weight, data.store = plain, store  # the fixture's run is shared with other tests
    assert type(data.train_dataloader().sampler) is WindowSampler


def _weights(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def test_resume_after_kill_matches_uninterrupted(duplex_data, tmp_path):
    steps = "--trainer.max_steps=8"
    every = [
        "--trainer.callbacks=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.every_n_train_steps=3",
        "--trainer.callbacks.save_top_k=-1",
        "--trainer.callbacks.filename={step}",
    ]
    full = run_cli(duplex_fit_args(duplex_data, tmp_path / "full", *SMALL, steps))
    save_file(_weights(full.model), str(tmp_path / "full.safetensors"))
    assert full.trainer.global_step == 8 and full.trainer.current_epoch >= 1  # crosses an epoch boundary

    # the interrupted run: same settings, no step limit, killed once its step-3 checkpoint is complete
    killed_dir = tmp_path / "killed"
    argv = duplex_fit_args(duplex_data, killed_dir, *SMALL, "--trainer.max_steps=100000", *every)
    proc = subprocess.Popen(mmduplex_command() + argv, env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    checkpoint, deadline = None, time.monotonic() + 900  # a guard against a hang only
    try:
        while checkpoint is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            for path in killed_dir.rglob("step=3.ckpt"):
                try:
                    read_checkpoint(path)
                    checkpoint = path
                except Exception:  # still being written
                    pass
    finally:
        proc.kill()
        _, stderr = proc.communicate()
    assert checkpoint is not None, f"no checkpoint from the run to interrupt:\n{stderr.decode()[-3000:]}"
    state = read_checkpoint(checkpoint)
    assert state["global_step"] == 3 and state["DuplexDataModule"]["batches"] > 0  # a mid-epoch checkpoint

    resumed = run_cli(duplex_fit_args(duplex_data, tmp_path / "resumed", *SMALL, steps, f"--ckpt_path={checkpoint}"))
    save_file(_weights(resumed.model), str(tmp_path / "resumed.safetensors"))
    a, b = load_file(str(tmp_path / "full.safetensors")), load_file(str(tmp_path / "resumed.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5, msg=lambda m, key=key: f"{key}: {m}")


def test_ddp_two_cpu_processes(duplex_data, tmp_path):
    argv = duplex_fit_args(
        duplex_data,
        tmp_path,
        *SMALL,
        "--trainer.max_steps=2",
        "--trainer.strategy=ddp",
        "--trainer.devices=2",
        "--trainer.accelerator=cpu",
    )
    # one thread per process: two multi-threaded processes on two cores spin against each other
    result = subprocess.run(mmduplex_command() + argv, env=subprocess_env(1), capture_output=True, timeout=400,
                            cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    checkpoints = list(tmp_path.rglob("*.ckpt"))
    assert checkpoints, "no checkpoint written"
    ckpt = read_checkpoint(checkpoints[0])
    assert ckpt["global_step"] == 2


@pytest.mark.parametrize("kind", ["projector", "lora"])
def test_finetune_modes_train_the_right_parameters(duplex_data, tmp_path, kind):
    extra = ["--model.init_args.finetune=" + kind, "--trainer.max_steps=1", *SMALL]
    if kind == "lora":
        extra += ["--model.init_args.lora.r=2", "--model.init_args.lora.alpha=4"]
    cli = run_cli(duplex_fit_args(duplex_data, tmp_path, *extra))
    trainable = {n for n, p in cli.model.model.named_parameters() if p.requires_grad}
    assert "video.mlp.0.weight" in trainable and "special_head.weight" in trainable
    backbone = {n for n in trainable if n.startswith("backbone.")}
    assert all("lora_" in n for n in backbone) and (bool(backbone) == (kind == "lora"))
    assert not any(p.requires_grad for p in cli.model.video_tokenizer.parameters())
