"""Benchmark of live duplex streaming with the real pretrained parts: EfficientNet-Lite0 + SmolLM2-135M on a CPU.

Run from the repository root (the weights are prepared once by ``mmduplex weights get``, offline afterwards)::

    OMP_NUM_THREADS=2 python -m benchmarks.bench_real_streaming
    python -m benchmarks.bench_real_streaming --seconds 30 --variants smollm2-fp32 smollm2-int8

Each variant streams ``--seconds`` of a generated moving-shapes video at 2 fps (video frames pushed at their times,
``--step-hz`` 5 steps per second) through :class:`~mmduplex.inference.session.DuplexSession`, which runs the whole live
path per frame and step: EfficientNet-Lite0 encode (192 px, stride-16 map) -> B-Flow (untrained defaults) -> projected
video slots + text stream -> one LM step on the sink + window KV cache. RTF = compute time / stream time; the
per-step latency includes the frame encodes on the steps that receive a frame. Variants:

- ``smollm2-fp32`` / ``smollm2-int8``: SmolLM2-135M-Instruct (real weights, 30 layers x 576) with its own BPE
  tokenizer, float32 or with int8 dynamic quantisation of its linear layers;
- ``qwen05b-fp32`` / ``qwen05b-int8``: a Qwen2.5-0.5B-shaped LM (random init, same encoder) for comparison.

The duplex parts (projector, PAD/EPAD rows) are untrained: the figures are about cost, not what is said.
Targets (issue "real parts"): RTF <= 0.5 with the real encoder and real LM (goal 0.3).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from benchmarks.bench_streaming import pct
from benchmarks.common import QWEN_05B, print_header

VARIANTS = ("smollm2-fp32", "smollm2-int8", "qwen05b-fp32", "qwen05b-int8")
SMOLLM2 = "smollm2-135m-instruct-q4_1"  # the registry's offline copy of HuggingFaceTB/SmolLM2-135M-Instruct


def build_session(variant: str, step_hz: float, fps: float, window: int):
    """A :class:`DuplexSession` over the real encoder and the variant's LM, and the LM's parameter count."""
    from mmduplex.inference.session import DuplexSession
    from mmduplex.lm.bundle import DuplexBundle
    from mmduplex.lm.model import DuplexLM, build_backbone
    from mmduplex.lm.text import TextTokenizer, build_word_tokenizer
    from mmduplex.tokenizer.bflow import BFlowConfig, BFlowTokenizer
    from mmduplex.tokenizer.encoders.factory import create_encoder

    lm, quantize = variant.split("-")
    encoder = create_encoder("efficientnet-lite0", device="cpu")
    torch.manual_seed(0)
    if lm == "smollm2":
        text = TextTokenizer.from_pretrained(SMOLLM2)
        backbone = build_backbone(SMOLLM2, torch_dtype="float32", attn_implementation="sdpa")
    else:
        text = build_word_tokenizer([f"w{i}" for i in range(QWEN_05B["vocab_size"] - 300)])
        backbone = build_backbone(QWEN_05B, torch_dtype="float32", attn_implementation="sdpa")
    params = sum(p.numel() for p in backbone.parameters())
    if quantize == "int8":  # the backbone's linear layers (LM head included); the duplex parts stay float32
        backbone = torch.ao.quantization.quantize_dynamic(backbone.eval(), {torch.nn.Linear}, dtype=torch.qint8)
    model = DuplexLM(backbone, text.vocab_size, text.pad_id, text.epad_id, encoder.width, slots_per_step=8).eval()
    video = BFlowTokenizer(BFlowConfig(dim=encoder.width, grid=encoder.grid))
    config = {"step_hz": step_hz, "delay_steps": 2, "slots_per_step": 8, "fps": fps, "encoder": encoder.fingerprint}
    bundle = DuplexBundle(model, text, video.eval(), config)
    return DuplexSession(bundle, sink=4, window=window, encoder=encoder), params


@torch.inference_mode()
def stream(variant: str, seconds: float, step_hz: float, fps: float, window: int) -> dict:
    """Stream ``seconds`` of a moving-shapes video through the variant; RTF and step latencies."""
    from mmduplex.data.synthetic import make_motion_video

    session, params = build_session(variant, step_hz, fps, window)
    frames = torch.as_tensor(make_motion_video(round(seconds * fps), fps, speed=40.0, size=192))  # [T, S, S, 3]
    for _ in session.run([(0.0, frames[0])], end_s=3 / step_hz, flush=False):  # warm-up (oneDNN), not timed
        pass
    session.reset()
    start = time.perf_counter()
    outs = list(session.run(((k / fps, f) for k, f in enumerate(frames)), end_s=seconds))
    wall = time.perf_counter() - start
    steps = [o.elapsed_s * 1e3 for o in outs]
    return {
        "params_m": params / 1e6,
        "steps": len(outs),
        "rtf": wall / (len(outs) / step_hz),
        "step_p50": statistics.median(steps),
        "step_p95": pct(steps, 95),
        "video_tokens_per_s": session.video_tokens / seconds,
    }


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="stream length per variant")
    parser.add_argument("--step-hz", type=float, default=5.0, help="model steps per second")
    parser.add_argument("--fps", type=float, default=2.0, help="video frames per second")
    parser.add_argument("--window", type=int, default=512, help="KV-cache window (steps) after a 4-step sink")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*quantiz", category=DeprecationWarning)  # torch.ao's notice
    warnings.filterwarnings("ignore", message=".*quantiz", category=UserWarning)

    print_header("bench_real_streaming: EfficientNet-Lite0 + SmolLM2-135M, DuplexSession on CPU")
    print(f"torch threads: {torch.get_num_threads()}; {args.seconds:g} s of video at {args.fps:g} fps, "
          f"{args.step_hz:g} Hz steps, sink 4 + window {args.window}")  # fmt: skip
    for variant in args.variants:
        r = stream(variant, args.seconds, args.step_hz, args.fps, args.window)
        target = "target <= 0.5 (goal 0.3): " + ("met" if r["rtf"] <= 0.5 else "NOT met")
        print(f"{variant:>13}: {r['params_m']:.0f}M LM params, {r['steps']} steps, step_ms p50 {r['step_p50']:.1f} "
              f"p95 {r['step_p95']:.1f}, video {r['video_tokens_per_s']:.1f} tok/s, RTF {r['rtf']:.3f}"
              + (f" ({target})" if variant.startswith("smollm2") else ""))  # fmt: skip


if __name__ == "__main__":
    main()
