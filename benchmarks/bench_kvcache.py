"""Benchmark of the bounded sink + window KV cache: per-step latency, cache memory, recompute speed-up, drift.

Run from the repository root::

    OMP_NUM_THREADS=1 python -m benchmarks.bench_kvcache                  # tiny model, 1k and 10k steps
    python -m benchmarks.bench_kvcache --hidden 256 --layers 4 --steps 1000 5000

Prints, for a random-initialised Llama-style LM stepped one position per call:
1. per-step latency (median over the last ``--tail`` steps) and KV-cache bytes after N steps, bounded
   ``SinkWindowCache`` vs an unbounded ``DynamicCache``;
2. the speed-up of one cached step over recomputing the whole sink + window context without a cache;
3. the drift of re-rotated keys after a long stream, float32 and bfloat16 (layer-0 keys vs a fresh forward over
   the kept tokens at contiguous positions; relative max error).
"""

from __future__ import annotations

import argparse
import statistics
import time

import psutil
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from benchmarks.common import print_header
from mmduplex.lm.kvcache import SinkWindowCache


def build_model(hidden: int, layers: int, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    """A random-initialised Llama-style LM (head dim 16, two query heads per KV head)."""
    heads = max(hidden // 16, 2)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads // 2,
        head_dim=16,
        max_position_embeddings=1 << 16,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(dtype).eval()


def cache_bytes(cache: DynamicCache) -> int:
    """Bytes held by the cached keys and values."""
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))


@torch.no_grad()
def stream(model: LlamaForCausalLM, cache: DynamicCache, steps: int, tail: int) -> tuple[float, int]:
    """Step ``steps`` positions; return the median step time (ms) over the last ``tail`` steps and cache bytes."""
    ids = torch.randint(0, model.config.vocab_size, (1, steps))
    times = []
    for t in range(steps):
        start = time.perf_counter()
        model(input_ids=ids[:, t : t + 1], cache=cache, use_cache=True)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times[-tail:]), cache_bytes(cache)


@torch.no_grad()
def recompute_speedup(model: LlamaForCausalLM, sink: int, window: int, repeats: int) -> tuple[float, float]:
    """Median ms of one cached step on a full bounded cache vs one uncached forward over sink + window + 1 tokens."""
    ids = torch.randint(0, model.config.vocab_size, (1, sink + window + 1))
    cache = SinkWindowCache(model, sink=sink, window=window)
    model(input_ids=ids[:, :-1], cache=cache)
    cached, full = [], []
    for _ in range(repeats):
        step_cache = cache.copy()
        start = time.perf_counter()
        model(input_ids=ids[:, -1:], cache=step_cache)
        cached.append(time.perf_counter() - start)
        start = time.perf_counter()
        model(input_ids=ids, use_cache=False)
        full.append(time.perf_counter() - start)
    return 1e3 * statistics.median(cached), 1e3 * statistics.median(full)


@torch.no_grad()
def drift(dtype: torch.dtype, sink: int, window: int, steps: int) -> float:
    """Relative max error of layer-0 keys after ``steps`` streamed positions vs a fresh forward on the kept tokens."""
    model = build_model(64, 1, dtype)
    ids = torch.randint(0, model.config.vocab_size, (1, steps))
    cache = SinkWindowCache(model, sink=sink, window=window)
    for t in range(steps):
        model(input_ids=ids[:, t : t + 1], cache=cache)
    length = cache.length
    kept = torch.cat((ids[:, :sink], ids[:, steps - (length - sink) :]), dim=1)
    want = model(input_ids=kept, use_cache=True).cache.layers[0].keys.float()
    got = cache.current_keys(0).float()
    return ((got - want).abs().max() / want.abs().max()).item()


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=64, help="LM hidden size")
    parser.add_argument("--layers", type=int, default=2, help="LM layers")
    parser.add_argument("--sink", type=int, default=4, help="attention-sink positions")
    parser.add_argument("--window", type=int, default=512, help="sliding-window positions")
    parser.add_argument("--steps", type=int, nargs="+", default=[1000, 10000], help="stream lengths")
    parser.add_argument("--tail", type=int, default=200, help="steps at the end whose median latency is reported")
    parser.add_argument("--drift-steps", type=int, default=3000, help="stream length of the drift check")
    args = parser.parse_args(argv)

    print_header("bench_kvcache: sink + window KV cache")
    model = build_model(args.hidden, args.layers)
    print(f"model: llama hidden={args.hidden} layers={args.layers} float32; sink={args.sink} window={args.window}")
    rss = psutil.Process()
    print(f"{'steps':>7} {'cache':>9} {'step_ms_p50':>11} {'kv_MiB':>8} {'rss_MiB':>8}")
    for steps in args.steps:
        for name in ("bounded", "dynamic"):
            cache = SinkWindowCache(model, args.sink, args.window) if name == "bounded" else DynamicCache()
            ms, nbytes = stream(model, cache, steps, args.tail)
            print(f"{steps:>7} {name:>9} {ms:>11.3f} {nbytes / 2**20:>8.3f} {rss.memory_info().rss / 2**20:>8.1f}")
            del cache

    cached_ms, full_ms = recompute_speedup(model, args.sink, args.window, repeats=50)
    print(
        f"one step at {args.sink + args.window} cached positions: cached {cached_ms:.3f} ms, "
        f"recompute {full_ms:.3f} ms -> speed-up x{full_ms / cached_ms:.1f}"
    )

    print(f"re-rotation drift after {args.drift_steps} steps (sink 4, window 256), layer-0 keys, rel. max error:")
    for dtype in (torch.float32, torch.bfloat16):
        print(f"  {str(dtype).removeprefix('torch.'):>8} {drift(dtype, 4, 256, args.drift_steps):.2e}")


if __name__ == "__main__":
    main()
