"""Shared pytest fixtures. Everything runs on CPU with tiny configs; no network, no downloaded weights."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tiny models on a 2-core machine: one thread everywhere (subprocesses inherit it). More threads only add
# synchronisation here, and oversubscription against other processes slows tiny ops by up to 100x.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same RNG state, so results never depend on test order."""
    torch.manual_seed(0)
    yield


# ---------------------------------------------------------------------- duplex model (tests/test_duplex_*.py, export)


@pytest.fixture(scope="session")
def duplex_data(tmp_path_factory):
    """A small synthetic commentary set and its ``mmduplex-tiny`` feature cache (8 videos of 20-30 s, 2 fps).

    Returns ``{"synthetic_dir": Path, "features": Path}``; pass them to the duplex recipes as
    ``--data.init_args.synthetic_dir`` / ``--data.init_args.features``.
    """
    from mmduplex.data.synthetic import SyntheticConfig, generate_dataset
    from mmduplex.train.features import extract_features

    root = tmp_path_factory.mktemp("duplex_data")
    dataset = generate_dataset(root / "synthetic", SyntheticConfig(num_videos=8, duration_s=(20.0, 30.0)))
    extract_features(dataset.videos(), root / "features", encoder="mmduplex-tiny", fps=2.0)
    return {"synthetic_dir": root / "synthetic", "features": root / "features"}


@contextlib.contextmanager
def one_torch_thread():
    """Run tiny-model training with one torch thread: on a shared 2-core machine, tiny ops with 2 threads spin
    against other processes and run up to 100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def tiny_duplex_module(**settings):
    """An untrained ``DuplexModule`` small enough for unit tests: a 1-layer, 32-wide llama over a 2x2-grid B-Flow
    (token width 8), 5 Hz, tau 1, 4 video slots, the synthetic text tokenizer; ``settings`` override any argument."""
    from mmduplex.tokenizer.bflow import BFlowConfig, BFlowTokenizer
    from mmduplex.train.duplex_module import DuplexModule

    backbone = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                "num_attention_heads": 2, "num_key_value_heads": 1}  # fmt: skip
    arguments = {"step_hz": 5.0, "delay_steps": 1, "slots_per_step": 4, "lr": 1e-3, "text_tokenizer": "synthetic",
                 "attn_implementation": "sdpa", **settings}  # fmt: skip
    return DuplexModule(BFlowTokenizer(BFlowConfig(dim=8, grid=(2, 2), num_key_tokens=2)), backbone, **arguments)


def duplex_fit_args(data: dict, out_dir, *extra: str, recipe: str = "duplex/tiny") -> list[str]:
    """``mmduplex fit`` arguments: a duplex recipe on ``duplex_data``, quiet, logging under ``out_dir``."""
    from mmduplex.recipes import recipe_path

    return [
        "fit",
        "--config",
        str(recipe_path(recipe)),
        f"--data.init_args.synthetic_dir={data['synthetic_dir']}",
        f"--data.init_args.features={data['features']}",
        f"--trainer.default_root_dir={out_dir}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.num_sanity_val_steps=0",
        *extra,
    ]


@pytest.fixture(scope="session")
def tiny_duplex_run(duplex_data, tmp_path_factory):
    """The tiny duplex recipe trained for 48 steps on ``duplex_data`` (in-process), with a copy head (as the demo's
    recipe has; the tiny recipe, which the smoke demo trains, has none), shared by several tests.

    Returns ``{"checkpoint": last.ckpt, "metrics": metrics.csv, "module": the trained DuplexModule}``.
    """
    from pathlib import Path

    from mmduplex.train.lightning_cli import run_cli

    out = tmp_path_factory.mktemp("tiny_duplex_run")
    with one_torch_thread():
        cli = run_cli(
            duplex_fit_args(
                duplex_data,
                out,
                "--data.init_args.window_stride_s=2.0",
                "--trainer.max_steps=48",
                "--model.init_args.copy_dim=8",
                "--trainer.limit_val_batches=0",
                "--trainer.log_every_n_steps=1",
                "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
                f"--trainer.logger.save_dir={out}",
            )
        )
    log_dir = Path(cli.trainer.logger.log_dir)
    checkpoint = next(out.rglob("last.ckpt"))
    return {"checkpoint": checkpoint, "metrics": log_dir / "metrics.csv", "module": cli.model}


@pytest.fixture(scope="session")
def tiny_bundle(tiny_duplex_run, tmp_path_factory):
    """``tiny_duplex_run`` exported as an inference bundle folder (``mmduplex.lm.bundle.export_bundle``); shared."""
    from mmduplex.lm.bundle import export_bundle

    return export_bundle(tiny_duplex_run["checkpoint"], tmp_path_factory.mktemp("tiny_bundle") / "bundle")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The smoke demo (``recipes/demo/smoke.yaml``, baselines included) run once per test session, as a user runs it:
    the console script in a subprocess (its workers spawned), with every Python warning enabled
    (``PYTHONWARNINGS=default``), so tests see the terminal output. Shared by the demo and notebook tests: treat its
    folder as read-only (a re-run must reuse every stage)."""
    out = tmp_path_factory.mktemp("demo")
    script = Path(sys.executable).with_name("mmduplex")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "mmduplex"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}
    command += ["demo", "--out", str(out), "--config", "smoke"]
    # A guard against a hang only: with both cores busy with other work the smoke demo runs several times slower.
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    return SimpleNamespace(out=out, stdout=result.stdout, stderr=result.stderr)


@pytest.fixture(scope="session")
def smoke_demo(smoke_run) -> Path:
    """The folder of :func:`smoke_run`."""
    return smoke_run.out
