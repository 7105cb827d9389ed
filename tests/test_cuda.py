"""The CUDA paths: B-Flow stepped with CPU times on a GPU state, a streaming session on the GPU against the same
session on the CPU, and bf16-mixed duplex training on the GPU. Marked ``gpu``: deselected by default, skipped
without CUDA (`pytest -m gpu` on a machine with a GPU runs them)."""

from __future__ import annotations

import pytest
import torch

from mmduplex.inference.session import DuplexSession
from mmduplex.io.video import read_video
from mmduplex.lm.bundle import load_bundle

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(scope="module")
def clip(duplex_data):
    video = sorted((duplex_data["synthetic_dir"] / "videos").glob("*.mp4"))[0]
    frames = read_video(video, 2.0, size=96, end_s=8.0)
    return frames.timestamps.tolist(), frames.frames


def test_bflow_steps_on_cuda_with_cpu_times(tiny_bundle):
    tokenizer = load_bundle(tiny_bundle).video_tokenizer
    patches = torch.randn(3, tokenizer.num_patches, tokenizer.feature_dim)
    outputs = {}
    for device in ("cpu", "cuda"):
        tok = tokenizer.to(device)
        state = tok.init_state(1)
        counts = []
        for i in range(3):
            frames, _, state = tok.step(patches[i : i + 1].to(device), torch.tensor([0.5 * i]), state)
            counts.append(frames[0].n_tokens)
        outputs[device] = counts
    assert outputs["cuda"] == outputs["cpu"]


def test_session_on_cuda_matches_cpu(tiny_bundle, clip):
    times, frames = clip
    runs = {}
    for device in ("cpu", "cuda"):
        session = DuplexSession.from_bundle(tiny_bundle, device=device, pad_bias=-2.0)
        runs[device] = list(session.run(zip(times, frames, strict=True)))
    cpu, cuda = runs["cpu"], runs["cuda"]
    assert len(cuda) == len(cpu) > 40
    assert torch.allclose(cuda[0].logits.cpu(), cpu[0].logits, atol=1e-2)  # TF32 / kernel order: ~2e-3 seen
    same = sum(a.token_id == b.token_id for a, b in zip(cpu, cuda, strict=True))
    assert same >= 0.9 * len(cpu), f"{same}/{len(cpu)} tokens equal"


def test_duplex_fit_bf16_mixed_on_cuda(duplex_data, tmp_path):
    from conftest import duplex_fit_args

    from mmduplex.train.lightning_cli import run_cli

    args = ["--trainer.accelerator=gpu", "--trainer.precision=bf16-mixed", "--trainer.max_steps=3"]
    cli = run_cli(duplex_fit_args(duplex_data, tmp_path, *args, "--trainer.limit_val_batches=0"))
    assert cli.trainer.global_step == 3
    assert cli.trainer.strategy.root_device.type == "cuda"  # the module itself is back on the CPU after fit
