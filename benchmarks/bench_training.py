"""Duplex training throughput on CPU, and what the feature cache saves per epoch.

1. Training steps (forward + backward + AdamW) on collated windows, for the tiny recipe's backbone and a
   Qwen2.5-0.5B-shaped random LM (hidden 896, 24 layers, 14 heads, 2 KV heads, MLP 4864, vocabulary 151,936;
   built from its config, nothing downloaded): steps/s and text tokens (= model steps) per second.
2. The video side of one epoch over the synthetic set: patch features read from the cache versus decoding the
   videos and running the encoder (``mmduplex-tiny``, and ``ViT-B-16:random`` for a real encoder's
   cost), the frozen B-Flow tokenizer (the same work either way), and a memoised epoch (what
   :class:`mmduplex.train.duplex_module.DuplexModule` does after the first epoch: no video work at all).
3. Whole training epochs of the tiny recipe (Lightning, ``mmduplex-tiny``): features from the cache with memoised
   video tokens, versus features computed on the fly by the encoder for every window (no cache, no memo).

    python -m benchmarks.bench_training [--videos 8] [--qwen-steps 2] [--skip-qwen] [--encoders NAME ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback

from benchmarks.common import QWEN_05B, Timer, print_header
from mmduplex.lm.model import DuplexLM, LossWeights, build_backbone, text_loss
from mmduplex.lm.text import load_text_tokenizer
from mmduplex.train.duplex_datamodule import DuplexDataModule

TINY = {
    "model_type": "llama",
    "hidden_size": 96,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
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
    from mmduplex.io.video import read_video
    from mmduplex.tokenizer.bflow import BFlowConfig, BFlowTokenizer
    from mmduplex.tokenizer.encoders.factory import create_encoder
    from mmduplex.train.features import FeatureCache, extract_features, video_key

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


class EpochTimer(Callback):
    """Records the wall time of every training epoch."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds.append(time.perf_counter() - self._start)


class OnTheFlyDataModule(DuplexDataModule):
    """The same windows, but every request for a video's features decodes it and runs the encoder."""

    def load_features(self, key: str):
        from mmduplex.io.video import read_video
        from mmduplex.tokenizer.encoders.factory import create_encoder
        from mmduplex.train.features import FeatureRecord

        self.setup()
        if getattr(self, "_encoder", None) is None:
            self._encoder = create_encoder(self.encoder, device="cpu")
        source = self.cache.entries()[key]["source"]
        clip = read_video(source, self.fps, size=self._encoder.image_size)
        with torch.no_grad():
            encoded = self._encoder.encode(clip.frames)
        return FeatureRecord(encoded.patches, encoded.pooled, clip.timestamps, clip.duration_s, source)


def training_epochs(videos: int, workdir: Path, epochs: int) -> None:
    """Lightning epochs of the tiny recipe: cached features + memoised tokens vs encoding on the fly."""
    from mmduplex.data.synthetic import SyntheticConfig, generate_dataset
    from mmduplex.recipes import recipe_path
    from mmduplex.train.features import extract_features
    from mmduplex.train.lightning_cli import run_cli

    dataset = generate_dataset(workdir / "synthetic", SyntheticConfig(num_videos=videos, duration_s=(20.0, 30.0)))
    extract_features(list(dataset.videos()), workdir / "features", encoder="mmduplex-tiny", fps=2.0)
    results = {}
    for name, data_class, memo in (
        ("cache + memo", "mmduplex.train.duplex_datamodule.DuplexDataModule", "null"),
        ("on the fly", "benchmarks.bench_training.OnTheFlyDataModule", "0"),
    ):
        cli = run_cli(
            ["fit", "--config", str(recipe_path("duplex/tiny")), f"--data.class_path={data_class}",
             f"--data.init_args.synthetic_dir={workdir / 'synthetic'}",
             f"--data.init_args.features={workdir / 'features'}",
             f"--model.init_args.memo_videos={memo}", f"--trainer.max_epochs={epochs}", "--trainer.logger=false",
             "--trainer.limit_val_batches=0", "--trainer.callbacks=benchmarks.bench_training.EpochTimer",
             "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
             f"--trainer.default_root_dir={workdir / 'runs'}"]
        )  # fmt: skip
        results[name] = next(c for c in cli.trainer.callbacks if type(c).__name__ == "EpochTimer").seconds
        batches = cli.trainer.num_training_batches
    print(f"\ntiny recipe, {videos} synthetic videos, {batches} batches of 8 windows per epoch (wall s per epoch):")
    for name, seconds in results.items():
        print(f"  {name:<14} " + "  ".join(f"{s:7.2f}" for s in seconds))
    first, later = results["on the fly"], results["cache + memo"]
    print(f"  cache speed-up: first epoch {first[0] / later[0]:.1f} x, later epochs {first[-1] / later[-1]:.1f} x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8, help="synthetic videos in the epoch benchmark")
    parser.add_argument("--tiny-steps", type=int, default=20, help="timed optimiser steps, tiny model")
    parser.add_argument("--qwen-steps", type=int, default=2, help="timed optimiser steps, Qwen2.5-0.5B shape")
    parser.add_argument("--skip-qwen", action="store_true", help="skip the 0.5B-shaped model")
    parser.add_argument(
        "--encoders",
        nargs="+",
        default=["mmduplex-tiny", "ViT-B-16:random"],
        help="encoders (ViT-B-16:random: random weights)",
    )
    parser.add_argument("--vit-videos", type=int, default=3, help="synthetic videos for encoders other than tiny")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs timed per data path (0: skip)")
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
    if args.epochs:
        with tempfile.TemporaryDirectory() as tmp:
            training_epochs(args.videos, Path(tmp), args.epochs)


if __name__ == "__main__":
    main()
