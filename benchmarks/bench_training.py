"""Duplex training throughput on CPU, and what the feature cache saves per epoch.

1. Training steps (forward + backward + AdamW) on collated windows, for the tiny recipe's backbone and a
   Qwen2.5-0.5B-shaped random LM (hidden 896, 24 layers, 14 heads, 2 KV heads, MLP 4864, vocabulary 151,936;
   built from its config, nothing downloaded): steps/s and text tokens (= model steps) per second.
2. The video side of one epoch over the synthetic set: features read from the cache + the frozen video tokenizer,
   versus decoding the videos and running the encoder on the fly + the tokenizer; and a memoised epoch (what
   :class:`mmduplex.module.DuplexModule` does after the first epoch).

    python -m benchmarks.bench_training [--videos 8] [--qwen-steps 2] [--skip-qwen]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from benchmarks.common import Timer, print_header
from mmduplex.model import DuplexLM, LossWeights, build_backbone, text_loss
from mmduplex.text import load_text_tokenizer

TINY = {
    "model_type": "llama",
    "hidden_size": 96,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
QWEN_05B = {
    "model_type": "qwen2",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
}


def training_throughput(
    name: str, spec: dict, batch: int, steps: int, window: int, iters: int, finetune: str
) -> dict[str, float]:
    """Time ``iters`` optimiser steps on random windows ``[batch, window]`` (after one warm-up step)."""
    tok = load_text_tokenizer("synthetic")
    torch.manual_seed(0)
    vocab = spec.get("vocab_size", tok.vocab_size)
    backbone = build_backbone({**spec, "vocab_size": vocab}, attn_implementation="sdpa")
    model = DuplexLM(backbone, tok.vocab_size, tok.pad_id, tok.epad_id, token_dim=64, slots_per_step=steps)
    if finetune == "projector":
        model.backbone.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    text = torch.randint(0, tok.vocab_size, (batch, window))
    slots = torch.randn(batch, window, steps, 64)
    mask = torch.rand(batch, window, steps) > 0.5

    def step() -> None:
        loss, _ = text_loss(model(text, slots, mask).logits, text, tok.pad_id, tok.epad_id, LossWeights(pad=0.5))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    with Timer() as timer:
        for _ in range(iters):
            step()
    total = sum(p.numel() for p in model.parameters())
    result = {
        "params_m": total / 1e6,
        "trainable_m": sum(p.numel() for p in params) / 1e6,
        "steps_per_s": iters / timer.seconds,
        "text_tokens_per_s": iters * batch * window / timer.seconds,
        "cpu_s_per_step": timer.cpu_seconds / iters,
    }
    print(
        f"{name:<28} {finetune:<9} params {result['params_m']:8.1f} M (trainable {result['trainable_m']:8.1f} M)  "
        f"batch {batch} x {window} steps: {result['steps_per_s']:7.3f} steps/s, "
        f"{result['text_tokens_per_s']:9.1f} text tokens/s"
    )
    return result


def epoch_video_side(videos: int, workdir: Path) -> None:
    """One epoch of video tokens: from the feature cache vs encoding on the fly; then a memoised epoch."""
    from mmduplex.data.synthetic import SyntheticConfig, generate_dataset
    from mmduplex.features import FeatureCache, extract_features, video_key
    from mmduplex.video import read_video
    from tokenizer.bflow import BFlowConfig, BFlowTokenizer
    from tokenizer.encoder import create_encoder

    dataset = generate_dataset(workdir / "synthetic", SyntheticConfig(num_videos=videos, duration_s=(20.0, 30.0)))
    paths = list(dataset.videos())
    fps = 2.0
    with Timer() as build:
        extract_features(paths, workdir / "features", encoder="mmduplex-tiny", fps=fps)
    cache = FeatureCache(workdir / "features")
    tokenizer = BFlowTokenizer(BFlowConfig(dim=64, grid=(12, 12), num_key_tokens=8, max_flow_tokens=16)).eval()
    encoder = create_encoder("mmduplex-tiny")
    frames = 0
    with Timer() as cached, torch.no_grad():
        memo = {}
        for path in paths:
            record = cache.load(video_key(path))
            memo[path] = tokenizer.tokenize(record.patches, record.timestamps).frames
            frames += record.patches.shape[0]
    with Timer() as live, torch.no_grad():
        for path in paths:
            clip = read_video(path, fps, size=encoder.image_size)
            patches = encoder.encode(clip.frames).patches
            tokenizer.tokenize(patches, clip.timestamps)
    with Timer() as memoised:
        for path in paths:
            _ = memo[path]
    print(f"\nvideo side of one epoch over {videos} synthetic videos ({frames} frames at {fps:g} fps, mmduplex-tiny):")
    print(f"  building the cache once            {build.seconds:8.2f} s")
    print(f"  cache + tokenizer                  {cached.seconds:8.2f} s  ({frames / cached.seconds:7.1f} frames/s)")
    print(f"  decode + encoder + tokenizer       {live.seconds:8.2f} s  ({frames / live.seconds:7.1f} frames/s)")
    print(f"  memoised tokens (epochs 2+)        {memoised.seconds:8.4f} s")
    print(f"  cache speed-up over on-the-fly     {live.seconds / cached.seconds:8.1f} x")
    print(f"  memo speed-up over on-the-fly      {live.seconds / max(memoised.seconds, 1e-9):8.0f} x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8, help="synthetic videos in the epoch benchmark")
    parser.add_argument("--tiny-steps", type=int, default=20, help="timed optimiser steps, tiny model")
    parser.add_argument("--qwen-steps", type=int, default=2, help="timed optimiser steps, Qwen2.5-0.5B shape")
    parser.add_argument("--skip-qwen", action="store_true", help="skip the 0.5B-shaped model")
    args = parser.parse_args()
    print_header("duplex training throughput (CPU)")
    print(f"torch threads: {torch.get_num_threads()}\n")
    training_throughput("tiny recipe (llama 96x2)", TINY, batch=8, steps=8, window=50, iters=args.tiny_steps,
                        finetune="full")  # fmt: skip
    if not args.skip_qwen:
        for finetune in ("projector", "full"):
            training_throughput("Qwen2.5-0.5B shape (random)", QWEN_05B, batch=1, steps=16, window=100,
                                iters=args.qwen_steps, finetune=finetune)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        epoch_video_side(args.videos, Path(tmp))


if __name__ == "__main__":
    main()
