"""What B-Flow's flow tokens say, measured against the synthetic set's ground truth (issue 20, step 2).

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.bench_flow_tokens [--videos 32] [--work /tmp/bench_flow_tokens]
[--out flow_tokens.json]``. Makes (or reuses) ``--videos`` synthetic videos with the demo's settings
(``recipes/demo/default.yaml``: durations, encoder ``efficientnet-lite0-s8``, 2 fps; the data seed ``--seed``) and
their features, then runs each tokenizer configuration below on them, **untrained** (B-Flow's decisions do not
depend on its learned weights; ``reconstruction: cells``, so the fidelity column does not either) and reads the
video specs (shape positions, colours, events) to score the tokens:

- ``tok/s``: every token (keyframes included) over the duration; ``flow/frame``: change tokens per moving frame;
- ``cap hit``: moving frames (a non-key frame with a shape moving or entering) whose token count reached the
  per-frame cap (``max_flow_tokens``, ``max_tokens_per_frame``);
- ``on shape``: change tokens whose patches overlap a shape (>= 10 % of a patch); ``purity``: the mean share of a
  change token's patches that do;
- ``missed``: (moving frame, moving shape) pairs with no change token on the shape; ``2+ missed``: frames with two
  or more moving shapes in which one of them gets no token;
- ``stop -1/0/1/2`` and ``leave ...``: change tokens in the frame before a lone shape's ``stops`` / ``leaves`` event
  (the only shape on screen) and in frames 0, 1, 2 from it (the first frame at or after the event is 0; keyframes
  are left out);
- ``still age``: seconds since a still shape was last in a token (a keyframe, or a token on it), mean over still
  frames, and the share above 4 s;
- ``colour`` / ``shape``: a linear probe's held-out accuracy (videos of odd index) reading the colour / shape from a
  change token's value, on tokens over exactly one shape (trained on the even videos);
- ``fidelity``: the cells reconstruction against the features.

A benchmark, not a product path: it reads the synthetic ground truth, which no tokenizer may.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from benchmarks.common import Timer, print_header
from mmduplex.data.synthetic import COLOURS, SHAPES, SyntheticConfig, SyntheticDataset, VideoSpec
from mmduplex.data.synthetic_render import _draw  # the renderer's own geometry: coverage matches the pixels
from mmduplex.io.feature_cache import FeatureCache, video_key
from mmduplex.recipes import recipe_path
from mmduplex.tokenizer.bflow import BFlowConfig, BFlowTokenizer
from mmduplex.tokenizer.fidelity import fidelity
from mmduplex.train.synthetic_cache import prepare_synthetic_cache

COVER = 0.1  # a patch is on a shape when the shape covers this share of its pixels
MOVING_PX = 0.5  # a shape moved when its centre moved this far since the previous sampled frame
OLD_S = 4.0  # a still shape last seen longer ago than this is "forgotten"


def recipe_config(name: str) -> dict:
    """The B-Flow config of a tokenizer recipe (``model.init_args.config``)."""
    return dict(yaml.safe_load(recipe_path(name).read_text(encoding="utf-8"))["model"]["init_args"]["config"])


def configurations() -> dict[str, dict]:
    """The rows: patch tokens (lite0_s8), the issue's config change, the region recipe and its ablations."""
    patch = recipe_config("tokenizer/lite0_s8")
    region = recipe_config("tokenizer/lite0_s8_region")
    return {
        "patch (lite0_s8)": patch,
        "patch, flow_region 2, max 16": {**patch, "flow_region": 2, "max_flow_tokens": 16},
        "region (lite0_s8_region)": region,
        "region, region_max 4": {**region, "region_max": 4},
        "region, no split": {**region, "region_split": None},
        "region, no hysteresis": {**region, "region_grow": 1.0},
        "region, no refresh": {**region, "refresh_interval_s": None},
    }


@dataclass
class Truth:
    """Ground truth of one video at its sampled frames."""

    cover: np.ndarray  # [T, S, P] share of each patch each shape covers
    moving: np.ndarray  # [T, S] bool: on screen and moved (or entered) since the previous frame
    still: np.ndarray  # [T, S] bool: on screen and did not move
    colour: np.ndarray  # [T, S] colour index
    shape: np.ndarray  # [S] shape index


def ground_truth(spec: VideoSpec, times: np.ndarray, grid: tuple[int, int]) -> Truth:
    h, w = grid
    num_t, num_s = len(times), len(spec.shapes)
    cover = np.zeros((num_t, num_s, h * w))
    centre = np.full((num_t, num_s, 2), np.nan)
    colour = np.zeros((num_t, num_s), dtype=int)
    for k, track in enumerate(spec.shapes):
        for i, t in enumerate(times):
            colour[i, k] = list(COLOURS).index(track.colour_at(float(t)))
            pos = track.position(float(t))
            if pos is None:
                continue
            centre[i, k] = pos
            drawn = _draw(track.shape, track.size, pos[0], pos[1], spec.height, spec.width, spec.shading)
            if drawn is None:
                continue
            rows, cols, mask, _ = drawn
            pixels = np.zeros((spec.height, spec.width))
            pixels[rows, cols] = mask
            cover[i, k] = pixels.reshape(h, spec.height // h, w, spec.width // w).mean(axis=(1, 3)).reshape(-1)
    on = cover.max(axis=2) > 0  # [T, S]
    step = np.linalg.norm(np.diff(centre, axis=0), axis=-1)  # [T - 1, S], nan where either end is off screen
    moved = np.concatenate([np.zeros((1, num_s), dtype=bool), ~(step <= MOVING_PX)], axis=0)  # nan: entered
    moving = on & moved
    moving[0] = False
    shapes = np.array([SHAPES.index(track.shape) for track in spec.shapes])
    return Truth(cover, moving, on & ~moved, colour, shapes)


@dataclass
class Tally:
    """Running sums of one configuration over the videos."""

    seconds: float = 0.0
    tokens: int = 0
    still_tokens: int = 0
    moving_frames: int = 0
    moving_tokens: int = 0
    cap_hits: int = 0
    change_tokens: int = 0
    patches: int = 0
    on_shape: int = 0
    shared: int = 0
    purity: float = 0.0
    pairs: int = 0
    missed: int = 0
    multi_frames: int = 0
    multi_missed: int = 0
    after: dict = field(default_factory=lambda: {a: {k: [] for k in (-1, 0, 1, 2)} for a in ("stops", "leaves")})
    ages: list = field(default_factory=list)
    fidelity_sum: float = 0.0
    frames: int = 0
    probe: list = field(default_factory=list)  # (video index, value, colour, shape)

    def add(self, index: int, spec: VideoSpec, truth: Truth, tok: BFlowTokenizer, patches, times) -> None:
        out, trail = tok.trace(patches, times)
        cfg = tok.config
        caps = [c for c in (cfg.max_flow_tokens, cfg.max_tokens_per_frame) if c is not None]
        cap = min(caps) if caps else math.inf
        self.seconds += spec.duration_s
        self.tokens += out.tokens_total
        self.fidelity_sum += fidelity(patches, out.recon) * len(times)
        self.frames += len(times)
        last_seen = np.full(len(spec.shapes), -np.inf)
        change_counts = []
        for i, (frame, dec) in enumerate(zip(out.frames, trail, strict=True)):
            t = float(times[i])
            on_patch = truth.cover[i] >= COVER  # [S, P]
            if frame.kind == "key":
                change_counts.append(None)
                last_seen[on_patch.any(axis=1)] = t
                continue
            members = dec.flow_patches.numpy()  # [n, P]
            still = dec.flow_still.numpy()
            hits = (members[:, None, :] & on_patch[None]).any(axis=2)  # [n, S]
            last_seen[hits.any(axis=0)] = t
            change = ~still
            change_counts.append(int(change.sum()))
            self.still_tokens += int(still.sum())
            self.change_tokens += int(change.sum())
            self.on_shape += int(hits[change].any(axis=1).sum())
            self.shared += int((hits[change].sum(axis=1) >= 2).sum())
            self.patches += int(members[change].sum())
            if change.any():
                share = (members[change] & on_patch.any(axis=0)[None]).sum(1) / members[change].sum(1)
                self.purity += float(share.sum())
            for row in np.nonzero(change & (hits.sum(axis=1) == 1))[0]:
                s = int(np.argmax(hits[row]))
                self.probe.append((index, dec.flow_values[row].numpy(), truth.colour[i, s], truth.shape[s]))
            moving = np.nonzero(truth.moving[i])[0]
            if len(moving):
                self.moving_frames += 1
                self.moving_tokens += int(change.sum())
                self.cap_hits += frame.n_tokens >= cap
                got = hits[change][:, moving].any(axis=0) if change.any() else np.zeros(len(moving), dtype=bool)
                self.pairs += len(moving)
                self.missed += int((~got).sum())
                if len(moving) >= 2:
                    self.multi_frames += 1
                    self.multi_missed += int(not got.all())
            for s in np.nonzero(truth.still[i])[0]:
                self.ages.append(t - last_seen[s])
        for event in spec.events:
            if event.action not in self.after:
                continue
            on_screen = sum(track.position(event.t) is not None for track in spec.shapes)
            start = int(np.searchsorted(times, event.t - 1e-6))
            if on_screen != 1:
                continue
            for k in (-1, 0, 1, 2):
                if 0 <= start + k < len(times) and change_counts[start + k] is not None:
                    self.after[event.action][k].append(change_counts[start + k])

    def row(self) -> dict:
        ages = np.array(self.ages) if self.ages else np.zeros(1)
        after = {
            f"{action[:-1]} {k}": (float(np.mean(v)) if v else None)
            for action, offsets in self.after.items()
            for k, v in offsets.items()
        }
        counts = {f"lone {action} events": float(len(offsets[0])) for action, offsets in self.after.items()}
        return {
            "tok/s": self.tokens / self.seconds,
            "flow/frame": self.moving_tokens / max(self.moving_frames, 1),
            "still tok/s": self.still_tokens / self.seconds,
            "cap hit": self.cap_hits / max(self.moving_frames, 1),
            "patches/token": self.patches / max(self.change_tokens, 1),
            "on shape": self.on_shape / max(self.change_tokens, 1),
            "on 2+ shapes": self.shared / max(self.change_tokens, 1),
            "purity": self.purity / max(self.change_tokens, 1),
            "missed": self.missed / max(self.pairs, 1),
            "2+ missed": self.multi_missed / max(self.multi_frames, 1),
            **after,
            **counts,
            "still age s": float(np.mean(np.minimum(ages, 1e3))),
            f"still > {OLD_S:g}s": float(np.mean(ages > OLD_S)),
            **probe_accuracy(self.probe),
            "fidelity": self.fidelity_sum / self.frames,
        }


def probe_accuracy(samples: list, steps: int = 300) -> dict:
    """Held-out accuracy of a linear probe (softmax regression) for colour and shape: even videos train, odd test."""
    if len(samples) < 20:
        return {"colour": None, "shape": None}
    index = np.array([s[0] for s in samples])
    x = torch.tensor(np.stack([s[1] for s in samples]), dtype=torch.float32)
    result = {}
    for name, column, classes in (("colour", 2, len(COLOURS)), ("shape", 3, len(SHAPES))):
        y = torch.tensor([s[column] for s in samples])
        train, test = torch.tensor(index % 2 == 0), torch.tensor(index % 2 == 1)
        layer = torch.nn.Linear(x.shape[1], classes)
        optimizer = torch.optim.Adam(layer.parameters(), lr=0.05, weight_decay=1e-4)
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(layer(x[train]), y[train])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            result[name] = float((layer(x[test]).argmax(1) == y[test]).float().mean())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=32, help="synthetic videos (the demo's settings)")
    parser.add_argument("--seed", type=int, default=1, help="data seed (1: not the demo's data, seed 0)")
    parser.add_argument("--work", default="/tmp/bench_flow_tokens", help="folder of the data set and features")
    parser.add_argument("--out", default=None, help="also write the figures as JSON")
    args = parser.parse_args()
    machine = print_header("B-Flow flow tokens against the synthetic ground truth")
    demo = yaml.safe_load(recipe_path("demo/default").read_text(encoding="utf-8"))
    synthetic = SyntheticConfig(
        num_videos=args.videos,
        duration_s=demo["duration_s"],
        heldout_fraction=demo["heldout_fraction"],
        word_delay_s=demo["word_delay_s"],
        question_interval_s=demo["question_interval_s"],
        seed=args.seed,
    )
    work = Path(args.work)
    with Timer() as prep:
        prepare_synthetic_cache(work / "data", work / "features", synthetic, encoder=demo["encoder"], fps=demo["fps"])
    dataset, cache = SyntheticDataset(work / "data"), FeatureCache(work / "features")
    print(
        f"{args.videos} videos, encoder {demo['encoder']} at {demo['fps']:g} fps; data + features {prep.seconds:.0f} s"
    )
    videos = []
    for vid in dataset.video_ids():
        record = cache.load(video_key(dataset.video_path(vid)))
        videos.append((dataset.spec(vid), record.patches, record.timestamps))
    dim, grid = videos[0][1].shape[2], tuple(recipe_config("tokenizer/lite0_s8")["grid"])
    truths = [ground_truth(spec, ts.numpy(), grid) for spec, _, ts in videos]
    rows = {}
    for name, config in configurations().items():
        tok = BFlowTokenizer(BFlowConfig(**{**config, "reconstruction": "cells"})).eval()
        if (tok.config.dim, tok.config.grid) != (dim, grid):
            raise SystemExit(f"{name}: the recipe expects {tok.config.grid} x {tok.config.dim}, got {grid} x {dim}")
        tally = Tally()
        with Timer() as timer, torch.inference_mode():
            for k, ((spec, patches, ts), truth) in enumerate(zip(videos, truths, strict=True)):
                tally.add(k, spec, truth, tok, patches, ts)
        rows[name] = {**tally.row(), "seconds": timer.seconds}
    print_table(rows)
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": machine, "videos": args.videos, "rows": rows}, indent=2))


def print_table(rows: dict[str, dict]) -> None:
    """One line per metric, one column per configuration."""
    names = list(rows)
    print("| metric | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for metric in rows[names[0]]:
        cells = []
        for name in names:
            value = rows[name][metric]
            cells.append("-" if value is None else f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}")
        print(f"| {metric} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
