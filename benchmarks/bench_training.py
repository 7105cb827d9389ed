"""Duplex training throughput on CPU, and what the feature cache saves per epoch.

1. Training steps (forward + backward + AdamW) on collated windows, for the tiny recipe's backbone and a
   Qwen2.5-0.5B-shaped random LM (hidden 896, 24 layers, 14 heads, 2 KV heads, MLP 4864, vocabulary 151,936;
   built from its config, nothing downloaded): steps/s and text tokens (= model steps) per second.
2. The video side of one epoch over the synthetic set: patch features read from the cache versus decoding the
   videos and running the encoder (``mmduplex-tiny``, and a random-initialised ``ViT-B-16`` for a real encoder's
   cost), the frozen B-Flow tokenizer (the same work either way), and a memoised epoch (what
   :class:`mmduplex.module.DuplexModule` does after the first epoch: no video work at all).

    python -m benchmarks.bench_training [--videos 8] [--qwen-steps 2] [--skip-qwen] [--encoders mmduplex-tiny ViT-B-16]
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
        f"{result['text_tokens_per_s']:9.1f} text tokens/s ({result['cpu_s_per_step']:.3f} CPU s/step)"
    )
    return result


def epoch_video_side(videos: int, workdir: Path, encoder_spec: str) -> None:
    """One epoch of video tokens: features from the cache vs decoding + encoding on the fly; then memoised tokens."""
    from mmduplex.data.synthetic import SyntheticConfig, generate_dataset
    from mmduplex.features import FeatureCache, extract_features, video_key
    from mmduplex.video import read_video
    from tokenizer.bflow import BFlowConfig, BFlowTokenizer
    from tokenizer.encoder import create_encoder

    dataset = generate_dataset(workdir / "synthetic", SyntheticConfig(num_videos=videos, duration_s=(20.0, 30.0)))
    paths = list(dataset.videos())
    fps, cache_dir = 2.0, workdir / f"features-{encoder_spec}"
    with Timer() as build:
        extract_features(paths, cache_dir, encoder=encoder_spec, fps=fps)
    cache = FeatureCache(cache_dir)
    encoder = create_encoder(encoder_spec, device="cpu")
    config = BFlowConfig(dim=encoder.width, grid=encoder.grid, num_key_tokens=8, max_flow_tokens=16)
    tokenizer = BFlowTokenizer(config).eval()
    features = {}
    with Timer() as cached:
        for path in paths:
            features[path] = cache.load(video_key(path))
    with Timer() as live, torch.no_grad():
        for path in paths:
            clip = read_video(path, fps, size=encoder.image_size)
            encoder.encode(clip.frames)
    memo = {}
    with Timer() as tokenize, torch.no_grad():
        for path, record in features.items():
            memo[path] = tokenizer.tokenize(record.patches, record.timestamps).frames
    with Timer() as memoised:
        for path in paths:
            _ = memo[path]
    frames = sum(r.patches.shape[0] for r in features.values())
    with_cache, on_the_fly = cached.seconds + tokenize.seconds, live.seconds + tokenize.seconds
    print(f"\nvideo side of one epoch, {videos} synthetic videos ({frames} frames at {fps:g} fps), {encoder_spec}:")
    print(f"  building the cache once             {build.seconds:9.2f} s")
    print(f"  features: read from the cache       {cached.seconds:9.3f} s")
    print(
        f"  features: decode + encode           {live.seconds:9.3f} s   ({live.seconds / cached.seconds:6.0f} x slower)"
    )
    print(f"  B-Flow tokenizer (either way)       {tokenize.seconds:9.3f} s")
    print(f"  first epoch with the cache          {with_cache:9.3f} s")
    print(f"  first epoch on the fly              {on_the_fly:9.3f} s   ({on_the_fly / with_cache:6.1f} x slower)")
    print(f"  later epochs (memoised tokens)      {memoised.seconds:9.5f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8, help="synthetic videos in the epoch benchmark")
    parser.add_argument("--tiny-steps", type=int, default=20, help="timed optimiser steps, tiny model")
    parser.add_argument("--qwen-steps", type=int, default=2, help="timed optimiser steps, Qwen2.5-0.5B shape")
    parser.add_argument("--skip-qwen", action="store_true", help="skip the 0.5B-shaped model")
    parser.add_argument(
        "--encoders", nargs="+", default=["mmduplex-tiny", "ViT-B-16"], help="encoders (ViT-B-16: random init)"
    )
    parser.add_argument("--vit-videos", type=int, default=3, help="synthetic videos for encoders other than tiny")
    args = parser.parse_args()
    print_header("duplex training throughput (CPU)")
    print(f"torch threads: {torch.get_num_threads()}\n")
    training_throughput("tiny recipe (llama 96x2)", TINY, batch=8, steps=8, window=50, iters=args.tiny_steps,
                        finetune="full")  # fmt: skip
    if not args.skip_qwen:
        for finetune in ("projector", "full"):
            training_throughput("Qwen2.5-0.5B shape (random)", QWEN_05B, batch=1, steps=16, window=100,
                                iters=args.qwen_steps, finetune=finetune)  # fmt: skip
    for spec in args.encoders:
        with tempfile.TemporaryDirectory() as tmp:
            epoch_video_side(args.videos if spec == "mmduplex-tiny" else args.vit_videos, Path(tmp), spec)


if __name__ == "__main__":
    main()
