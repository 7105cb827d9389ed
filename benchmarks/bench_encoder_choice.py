"""How the demo's real encoder is cut and fed: EfficientNet-Lite0 cost per frame by input size, stage, batch norm
folding, batch size and threads, next to the patch grid each choice gives.

Run from the repository root (weights prepared once by ``mmduplex weights get efficientnet-lite0``)::

    python -m benchmarks.bench_encoder_choice [--frames 64] [--repeats 3]

The frames are the synthetic set's (96 px moving shapes, resized by the encoder's own preprocessing). Each row is
the best of ``--repeats`` wall-clock runs of ``encode`` over ``--frames`` frames (ms per frame), and the process CPU
time per frame. The project needs >= 144 patches per frame (so 64 pooled tokens are lossy); the rows show what each
stage/size gives and costs, and the default (192 px, stride 16, folded, 8 frames per pass, every core) is marked.
"""

from __future__ import annotations

import argparse
import copy

import torch

from benchmarks.common import best_of, print_header

STAGES = {8: 2, 16: 4, 32: 6}  # feature stride -> last timm block run


def variant(base, image_size: int, stride: int, folded: bool, batch: int):
    """A copy of the encoder cut after ``stride``'s stage, fed ``image_size`` px, with or without folded norms."""
    import timm
    from safetensors.torch import load_file

    from mmduplex.tokenizer.encoders.efficientnet import EfficientNetPreset, FrozenEfficientNet
    from mmduplex.weights import get_weights

    preset = EfficientNetPreset("tf_efficientnet_lite0", image_size, STAGES[stride], stride, 224)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(load_file(str(get_weights("efficientnet-lite0") / "model.safetensors")))
    encoder = FrozenEfficientNet(
        copy.deepcopy(model).eval(), preset, "bench", dict(base.fingerprint), max_batch=batch
    )  # folds its batch norms
    if not folded:  # the same cut over the published, unfolded network
        encoder.model = model.eval().to(memory_format=torch.channels_last)
    return encoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=64, help="frames per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per row; the fastest is reported")
    args = parser.parse_args()
    from mmduplex.data.synthetic import make_motion_video
    from mmduplex.tokenizer.encoders.factory import create_encoder

    print_header("bench_encoder_choice: EfficientNet-Lite0 cut and input for the demo")
    base = create_encoder("efficientnet-lite0", device="cpu")
    frames = torch.as_tensor(make_motion_video(args.frames, 5.0, 30.0, size=96))  # [T, 96, 96, 3]
    cores = torch.get_num_threads()
    rows = [(192, 16, True, 8, cores)]  # the default first
    rows += [(size, 16, True, 8, cores) for size in (160, 224, 256)]
    rows += [(192, stride, True, 8, cores) for stride in (8, 32)] + [(96, 8, True, 8, cores)]
    rows += [(192, 16, False, 8, cores)] + [(192, 16, True, batch, cores) for batch in (16, 32, 64)]
    rows += [(192, 16, True, 8, 1), (192, 16, True, 64, 1)]
    print("input px | stride | patches x width | BN folded | batch | threads | ms/frame wall | ms/frame cpu")
    print("--- | --- | --- | --- | --- | --- | --- | ---")
    for size, stride, folded, batch, threads in rows:
        encoder = variant(base, size, stride, folded, batch)
        torch.set_num_threads(threads)
        encoder.encode(frames[:batch], batch_size=batch)  # warm-up
        wall, cpu, count = best_of(lambda e=encoder, b=batch: len(e.encode(frames, b).patches), args.repeats)
        shape = f"{encoder.num_patches} x {encoder.width}"
        mark = " (default)" if (size, stride, folded, batch, threads) == rows[0] else ""
        print(f"{size} | {stride} | {shape} | {folded} | {batch} | {threads} | {wall / count * 1e3:.1f}{mark} | "
              f"{cpu / count * 1e3:.1f}")  # fmt: skip
    torch.set_num_threads(cores)


if __name__ == "__main__":
    main()
