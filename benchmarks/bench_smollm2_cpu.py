"""The frozen SmolLM2-135M recipe on this CPU: what a training step and a streaming step cost by precision and LM-head
path, and how close bfloat16 stays to float32.

Run from the repository root (the registry's offline copy ``smollm2-135m-instruct-q4_1``, prepared once by
``mmduplex weights get``); each part is a separate run of a minute or two::

    python -m benchmarks.bench_smollm2_cpu --part train --threads 2 1
    python -m benchmarks.bench_smollm2_cpu --part stream --threads 2
    python -m benchmarks.bench_smollm2_cpu --part agree
    python -m benchmarks.bench_smollm2_cpu --part train --threads 2 --variants bf16-mixed/targets --compile

Parts:

- ``train``: one optimiser step (forward, loss, backward, gradient clipping, AdamW) of
  ``recipes/duplex/smollm2_projector.yaml`` (``--lora``: with ``smollm2_lora.yaml``'s rank-8 adapters): the LM frozen,
  video projector K = 8 x Dv = 64, batch 8 x 50 steps, the LM's own BPE tokenizer with PAD / EPAD. Variants:
  ``fp32`` (the LM head over every step, as before), ``fp32/targets`` (the head only on the steps with a target:
  exact), ``bf16-mixed`` (Lightning's CPU ``bf16-mixed``: bf16 autocast on float32 weights), ``bf16-mixed/targets``,
  ``bf16w/targets`` (the frozen LM held in bfloat16 under autocast: ``torch_dtype: bfloat16``, the GPU recipe's way)
  and ``bf16-mixed/subset`` (a head over 2,048 of the 49,152 entries: a bound on what restricting the vocabulary
  could save; not in the model). ``--compile`` adds the last variant under ``torch.compile`` (compile time printed).
- ``stream``: :class:`~mmduplex.inference.session.DuplexSession` fed feature frames at 2 fps, 5 Hz steps (B-Flow
  untrained, no image encoder: the LM step's cost), sink 4 + window 45 (the projector recipe's bundle): fp32, the
  session's ``torch_dtype="bfloat16"``, and int8 dynamic quantisation of the LM's linear layers (as
  ``bench_real_streaming``; not a session option). RTF = compute / stream time. Then one LM step over ``--batched``
  streams at once against one stream (what stepping the held-out videos side by side would cost).
- ``agree``: on the same 8 x 50 inputs, max / mean |logit difference| and top-1 agreement against fp32 (all steps,
  and the steps where fp32's top-1 margin exceeds 0.1), the loss difference and the cosine of the trainable
  parameters' gradient, with the cosine between two halves of the batch for scale (minibatch noise); at the untrained
  projector's scale and with its output x ``--video-scale`` (the video at the text embeddings' scale). Then 100
  streamed steps of fp32, bf16 and int8 sessions side by side (each fed fp32's tokens).

The duplex parts are untrained (seeded): the figures are about cost and numerics, not what is said. Ratios are
against fp32 in the same run and thread count. The machine may be shared: the header prints the load average, and
each figure is the fastest of ``--steps`` timed steps after a warm-up, with its CPU seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks.bench_streaming import pct
from benchmarks.common import Timer, print_header

SMOLLM2 = "smollm2-135m-instruct-q4_1"  # the registry's offline copy of HuggingFaceTB/SmolLM2-135M-Instruct
BATCH, STEPS, K, DV, HZ, TAU = 8, 50, 8, 64, 5.0, 4  # the projector recipe's batch, window (10 s at 5 Hz), K, Dv
TRAIN_VARIANTS = (
    "fp32",
    "fp32/targets",
    "bf16-mixed",
    "bf16-mixed/targets",
    "bf16w/targets",
    "bf16-mixed/subset",
)
STREAM_VARIANTS = ("fp32", "bf16", "int8")
SUBSET = 2048
LINES = (
    "a red circle comes in from the left",
    "the blue square moves up",
    "two green triangles meet in the middle",
    "the yellow star leaves at the top",
    "a purple circle stops near the corner",
)


def load_parts():
    """The text tokenizer and the float32 SmolLM2 backbone."""
    from mmduplex.lm.model import build_backbone
    from mmduplex.lm.text import TextTokenizer

    text = TextTokenizer.from_pretrained(SMOLLM2)
    return text, build_backbone(SMOLLM2, torch_dtype="float32", attn_implementation="sdpa")


def duplex(text, backbone, dtype: torch.dtype = torch.float32, lora: bool = False):
    """A seeded, untrained DuplexLM around a copy of ``backbone`` held in ``dtype``, the LM frozen (with ``lora``:
    ``recipes/duplex/smollm2_lora.yaml``'s rank-8 adapters on q, k, v, o, which train)."""
    from mmduplex.lm.model import DuplexLM, LoraSettings, apply_lora

    lm = copy.deepcopy(backbone).requires_grad_(False)
    for param in lm.parameters():  # as the LM loads in that dtype: the parameters, not the buffers (RoPE's inv_freq)
        param.data = param.data.to(dtype)
    torch.manual_seed(0)
    if lora:
        apply_lora(lm, LoraSettings(r=8, alpha=16.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
        for name, param in lm.named_parameters():
            param.requires_grad_("lora_" in name)
    return DuplexLM(lm, text.vocab_size, text.pad_id, text.epad_id, DV, K)


def batch(text) -> dict[str, torch.Tensor]:
    """Eight 50-step windows of commentary (words spaced as the synthetic set's lines, PAD between) and video."""
    from mmduplex.data.transcripts import Word
    from mmduplex.lm.alignment import align_text

    g = torch.Generator().manual_seed(0)
    rows = []
    for b in range(BATCH):
        words, t = [], 0.3 * b
        for k in range(4):
            for w in LINES[(b + k) % len(LINES)].split():
                words.append(Word(t, t + 0.3, w))
                t += 0.35
            t += 1.5
        rows.append(align_text(words, STEPS, HZ, text, TAU))
    return {
        "text_ids": torch.stack(rows),  # [B, S]
        "video_slots": torch.randn(BATCH, STEPS, K, DV, generator=g),  # [B, S, K, Dv]
        "video_mask": torch.rand(BATCH, STEPS, K, generator=g) < 0.7,  # [B, S, K]
        "user_ids": torch.full((BATCH, STEPS), text.pad_id),  # [B, S]
    }


def subset_logits(model, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Bench only: logits over the LM rows ``ids`` plus PAD / EPAD (what a restricted vocabulary would compute)."""
    weight = model.backbone.get_output_embeddings().weight[ids]  # [N, H]
    lm = F.linear(hidden, weight.to(hidden.dtype) if not torch.is_autocast_enabled("cpu") else weight)
    special = model.special_head(hidden.to(model.special_head.weight.dtype)).float()
    return torch.cat([lm, special], dim=-1)  # [B, S - 1, N + 2]


def loss_of(model, data: dict, variant: str, subset: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The projector recipe's loss (pad weight 0.5) by ``variant``'s head path; and the logits it used."""
    from mmduplex.lm.model import LossWeights, text_loss

    text_ids = data["text_ids"]
    args = (text_ids, data["video_slots"], data["video_mask"], data["user_ids"])
    pad, epad = model.pad_id, model.epad_id
    if variant.endswith("/subset"):
        hidden = model.backbone.get_decoder()(
            inputs_embeds=model.embed(*args[:3], args[3]), use_cache=False
        ).last_hidden_state[:, :-1]  # [B, S - 1, H]
        logits = subset_logits(model, hidden, subset)
        # targets re-indexed into the subset (ids outside it fall back to PAD: a bound on cost, not a loss to use)
        lookup = torch.full((model.vocab_size,), subset.numel(), dtype=torch.long)
        lookup[subset] = torch.arange(subset.numel())
        lookup[epad] = subset.numel() + 1
        target = lookup[text_ids]
        loss, _ = text_loss(logits, target, subset.numel(), subset.numel() + 1, LossWeights(pad=0.5))
        return loss, logits
    logits = model(*args, targets_only=variant.endswith("/targets")).logits
    loss, _ = text_loss(logits, text_ids, pad, epad, LossWeights(pad=0.5))
    return loss, logits


def autocast(variant: str) -> contextlib.AbstractContextManager:
    enabled = variant.startswith("bf16")
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def train_step_fn(model, data: dict, variant: str) -> Callable[[], float]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    vocab = model.backbone.get_output_embeddings().weight.shape[0]
    subset = torch.unique(torch.cat([data["text_ids"].flatten(), torch.arange(SUBSET)]))
    subset = subset[subset < vocab][:SUBSET]

    def step() -> float:
        with autocast(variant):
            loss, _ = loss_of(model, data, variant, subset)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def time_round_robin(steps: dict[str, Callable[[], float]], repeats: int) -> dict[str, tuple[float, ...]]:
    """Per step: its warm-up seconds, then the fastest and median wall seconds and the fastest CPU seconds of
    ``repeats`` runs, taken in turn (one of each, then again), so that a change in the machine's load hits every
    variant alike."""
    warm, walls, cpus = {}, {name: [] for name in steps}, {name: [] for name in steps}
    for name, step in steps.items():
        with Timer() as timer:
            step()
        warm[name] = timer.seconds
    for _ in range(repeats):
        for name, step in steps.items():
            with Timer() as timer:
                step()
            walls[name].append(timer.seconds)
            cpus[name].append(timer.cpu_seconds)
    return {name: (warm[name], min(walls[name]), statistics.median(walls[name]), min(cpus[name])) for name in steps}


def part_train(args: argparse.Namespace) -> None:
    text, backbone = load_parts()
    data = batch(text)
    words = float(((data["text_ids"] != text.pad_id) & (data["text_ids"] != text.epad_id)).float().mean())
    what = "LoRA r 8 on q, k, v, o + projector" if args.lora else "projector"
    print(f"{what}; batch {BATCH} x {STEPS} steps, {words:.0%} word targets; fastest of {args.steps} steps (taken in "
          "turn) after a warm-up")  # fmt: skip
    variants = [v for v in TRAIN_VARIANTS if v in args.variants]
    models = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        steps = {}
        for name in variants + ([f"{variants[-1]}+compile"] if args.compile else []):
            variant = name.removesuffix("+compile")
            dtype = torch.bfloat16 if variant.startswith("bf16w") else torch.float32
            if dtype not in models:
                models[dtype] = duplex(text, backbone, dtype, lora=args.lora)
            model = torch.compile(models[dtype]) if name.endswith("+compile") else models[dtype]
            steps[name] = train_step_fn(model, data, variant)
        times = time_round_robin(steps, args.steps)
        base = times.get("fp32")
        for name, (warm, best, median, cpu) in times.items():
            ratio = f" ({best / base[1]:.2f}x fp32 wall, {cpu / base[3]:.2f}x CPU)" if base else ""
            extra = f", first step {warm:.1f} s (compile)" if name.endswith("+compile") else ""
            print(f"  threads {threads} {name:<22} {best:6.3f} s/step (median {median:.3f}, CPU {cpu:.2f} s)"
                  f"{ratio}{extra}")  # fmt: skip


def int8(model):
    """A copy of ``model`` with int8 dynamic quantisation of the LM's linear layers (LM head included), as
    ``bench_real_streaming`` (not a session option)."""
    quantized = copy.deepcopy(model)
    quantized.backbone = torch.ao.quantization.quantize_dynamic(
        quantized.backbone, {torch.nn.Linear}, dtype=torch.qint8
    )
    return quantized


def session(text, model, dtype: str | None, window: int):
    from mmduplex.inference.session import DuplexSession
    from mmduplex.lm.bundle import DuplexBundle
    from mmduplex.tokenizer.bflow import BFlowConfig, BFlowTokenizer

    torch.manual_seed(0)
    video = BFlowTokenizer(BFlowConfig(dim=DV, grid=(12, 12)))
    config = {"step_hz": HZ, "delay_steps": TAU, "slots_per_step": K, "fps": 2.0, "encoder": None}
    bundle = DuplexBundle(model.eval(), text, video.eval(), config)
    return DuplexSession(bundle, sink=4, window=window, torch_dtype=dtype)


def features(seconds: float, fps: float = 2.0) -> list[tuple[float, torch.Tensor]]:
    """Patch features ``[144, 64]`` per frame at ``fps``: a random field drifting frame by frame."""
    g = torch.Generator().manual_seed(1)
    base, drift = torch.randn(144, DV, generator=g), torch.randn(144, DV, generator=g)
    return [(k / fps, base + 0.05 * k * drift) for k in range(round(seconds * fps))]


@torch.inference_mode()
def stream_once(sess, frames: list, seconds: float) -> dict:
    for _ in sess.run(frames[:1], end_s=3 / HZ, flush=False):  # warm-up, not timed
        pass
    sess.reset()
    start = time.perf_counter()
    outs = list(sess.run(frames, end_s=seconds, flush=False))
    wall = time.perf_counter() - start
    steps = [o.elapsed_s * 1e3 for o in outs]
    return {"steps": len(outs), "rtf": wall / (len(outs) / HZ), "p50": statistics.median(steps), "p95": pct(steps, 95)}


@torch.inference_mode()
def batched_step_ms(model, text, streams: int, cached: int, repeats: int = 5) -> float:
    """Milliseconds of one LM step (``S = 1``) over ``streams`` streams at once, each with ``cached`` positions in
    its KV cache: what streaming the held-out videos side by side would cost per step (fastest of ``repeats``)."""
    from transformers.cache_utils import DynamicCache

    g = torch.Generator().manual_seed(2)
    inputs = lambda s: (  # noqa: E731
        torch.full((streams, s), text.pad_id),
        torch.randn(streams, s, K, DV, generator=g),
        torch.ones(streams, s, K, dtype=torch.bool),
        torch.full((streams, s), text.pad_id),
    )
    best = float("inf")
    for _ in range(repeats):
        cache = DynamicCache()
        model(*inputs(cached), past_key_values=cache, use_cache=True)
        with Timer() as timer:
            model(*inputs(1), past_key_values=cache, use_cache=True)
        best = min(best, timer.seconds)
    return best * 1e3


def part_stream(args: argparse.Namespace) -> None:
    from mmduplex.inference.session import model_in_dtype

    text, backbone = load_parts()
    frames = features(args.seconds)
    model = duplex(text, backbone)
    print(f"{args.seconds:g} s at 2 fps, {HZ:g} Hz steps, sink 4 + window {args.window}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        base = None
        for variant in STREAM_VARIANTS:
            if variant not in args.variants:
                continue
            if variant == "int8":
                sess = session(text, int8(model), None, args.window)
            else:
                sess = session(text, model, "bfloat16" if variant == "bf16" else None, args.window)
            r = stream_once(sess, frames, args.seconds)
            base = r["p50"] if variant == "fp32" else base
            ratio = f" ({r['p50'] / base:.2f}x fp32)" if base else ""
            print(f"  threads {threads} {variant:<5} {r['steps']} steps, step_ms p50 {r['p50']:.1f} p95 {r['p95']:.1f}"
                  f"{ratio}, RTF {r['rtf']:.3f}")  # fmt: skip
        if args.batched:
            for name, lm in (("fp32", model), ("bf16", model_in_dtype(model, "bfloat16"))):
                one = batched_step_ms(lm, text, 1, args.window)
                for streams in args.batched:
                    ms = batched_step_ms(lm, text, streams, args.window)
                    print(f"  threads {threads} {name} LM step over {streams} streams at once ({args.window} cached): "
                          f"{ms:.1f} ms, {ms / streams:.1f} ms a stream ({one:.1f} ms for one)")  # fmt: skip


def compare(name: str, ref: torch.Tensor, other: torch.Tensor) -> None:
    ref, other = ref.float().flatten(0, -2), other.float().flatten(0, -2)  # [N, V]
    diff = (ref - other).abs()
    top2 = ref.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.1
    same = ref.argmax(-1) == other.argmax(-1)
    per_step = diff.amax(dim=-1)  # [N]: a few steps where the LM builds an attention-sink state dominate the max
    print(f"  {name:<28} max |diff| {diff.max():.3f} (99th pct of steps {per_step.quantile(0.99):.3f}), mean "
          f"{diff.mean():.4f}; top-1 agreement {same.float().mean():.4f}"
          f" ({int(same.sum())}/{same.numel()}), where fp32's margin > 0.1: {same[clear].float().mean():.4f}"
          f" ({int(clear.sum())} steps)")  # fmt: skip


def gradient(model, data: dict, variant: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loss, the logits of the steps with a target and the flattened gradient of the trainable parameters."""
    model.zero_grad(set_to_none=True)
    with autocast(variant):
        loss, logits = loss_of(model, data, variant)
    loss.backward()
    grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return loss.detach(), logits.detach()[:, : STEPS - 1], grad


def part_agree(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads[0])
    text, backbone = load_parts()
    data = batch(text)
    model32, model16 = duplex(text, backbone), duplex(text, backbone, torch.bfloat16)
    for scale in (1.0, args.video_scale):
        if scale != 1.0:  # the projector's output (and so the video's share of each step's input) scaled down
            with torch.no_grad():
                for param in (model32.video.mlp[2].weight, model32.video.mlp[2].bias, model32.video.slot_embedding):
                    param.mul_(scale)
        model16.load_state_dict({k: v for k, v in model32.state_dict().items() if not k.startswith("backbone.")},
                                strict=False)  # fmt: skip
        with torch.no_grad():
            norms = [float(model32.video(data["video_slots"], data["video_mask"]).norm(dim=-1).mean()),
                     float(model32._token_embedding(data["text_ids"]).norm(dim=-1).mean())]  # fmt: skip
        loss0, logits0, grad0 = gradient(model32, data, "fp32")
        print(f"teacher-forced, {BATCH} x {STEPS} steps (the steps with a target), video embedding norm "
              f"{norms[0]:.2f} (text {norms[1]:.2f}); fp32 loss {float(loss0):.5f}")  # fmt: skip
        for name, model in (("fp32/targets", model32), ("bf16-mixed/targets", model32), ("bf16w/targets", model16)):
            loss, logits, grad = gradient(model, data, name)
            compare(name, logits0, logits)
            cosine = F.cosine_similarity(grad0, grad, dim=0)
            print(f"  {'':<28} loss diff {float(loss - loss0):+.5f}, trainable-gradient cosine {float(cosine):.6f}, "
                  f"norm ratio {float(grad.norm() / grad0.norm()):.4f}")  # fmt: skip
        halves = [gradient(model32, {k: v[h] for k, v in data.items()}, "fp32")[2] for h in (slice(0, 4), slice(4, 8))]
        print(f"  {'':<28} for scale, the minibatch noise: fp32 gradient of windows 0-3 vs 4-7, cosine "
              f"{float(F.cosine_similarity(*halves, dim=0)):.6f}")  # fmt: skip
    # streaming: the bf16 and int8 sessions fed the fp32 session's tokens, step by step
    frames = features(20.0)
    sessions = {
        "fp32": session(text, model32, None, 45),
        "torch_dtype=bfloat16": session(text, model32, "bfloat16", 45),
        "int8 dynamic": session(text, int8(model32), None, 45),
    }
    logits: dict[str, list[torch.Tensor]] = {name: [] for name in sessions}
    pending = list(frames)
    with torch.inference_mode():
        for k in range(100):
            while pending and pending[0][0] < (k + 1) / HZ:  # the frames shown during step k
                t, patches = pending.pop(0)
                for sess in sessions.values():
                    sess.push_features(t, patches)
            outs = {name: sess.step() for name, sess in sessions.items()}
            for name, sess in sessions.items():
                sess._text_in = outs["fp32"].token_id  # bench only: the same text input for the next step
                logits[name].append(outs[name].logits)
    print(
        f"streamed (projector x {args.video_scale:g}), 100 steps on the sink 4 + window 45 cache, each session fed "
        "fp32's tokens:"
    )
    for name in list(sessions)[1:]:
        compare(f"session {name}", torch.stack(logits["fp32"]), torch.stack(logits[name]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("train", "stream", "agree"), required=True)
    parser.add_argument("--threads", type=int, nargs="+", default=[2], help="torch thread counts, in turn")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per variant (after a warm-up)")
    parser.add_argument("--variants", nargs="+", default=None, help="variants to run (default: all of the part)")
    parser.add_argument("--lora", action="store_true", help="train: the LoRA recipe's adapters train too")
    parser.add_argument("--compile", action="store_true", help="train: also the last variant under torch.compile")
    parser.add_argument("--seconds", type=float, default=20.0, help="stream: seconds of video per variant")
    parser.add_argument("--window", type=int, default=45, help="stream: cache window after a 4-step sink")
    parser.add_argument("--video-scale", type=float, default=0.1, help="agree: second regime, projector output x")
    parser.add_argument("--batched", type=int, nargs="*", default=[8], help="stream: LM steps over this many streams")
    args = parser.parse_args(argv)
    args.variants = args.variants or list(TRAIN_VARIANTS if args.part == "train" else STREAM_VARIANTS)
    warnings.filterwarnings("ignore", message=".*quantiz")
    print_header(f"bench_smollm2_cpu --part {args.part}: frozen SmolLM2-135M + projector on CPU")
    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    print(f"cpu capability {torch.backends.cpu.get_cpu_capability()}, oneDNN bf16 supported: {bf16}")
    {"train": part_train, "stream": part_stream, "agree": part_agree}[args.part](args)


if __name__ == "__main__":
    main()
