"""B-Flow's region flow tokens (``flow_mode: region``): a stop and a still shape's colour change reach the tokens
within one frame, a token covers a moving object whole and two objects get one each, still regions are refreshed,
bundles written before the mode existed load and behave unchanged, and the real-footage targets of ``mmduplex
tokenize`` hold in region mode.
Streaming == batch, causality and rate control of region mode are in ``tests/test_bflow.py`` (parametrised)."""

from __future__ import annotations

import json

import pytest
import torch

from mmduplex.errors import InputError
from mmduplex.tokenizer import BFlowConfig, BFlowTokenizer
from mmduplex.tokenizer.bflow import BUNDLE_KIND
from mmduplex.tokenizer.fidelity import normalize_features

D, GRID, FPS = 32, (12, 12), 5.0
P = GRID[0] * GRID[1]
REGION = {"flow_mode": "region"}
NEW_KEYS = (
    "flow_mode",
    "region_grow",
    "region_max",
    "region_split",
    "refresh_interval_s",
    "flow_order",
    "stop_tokens",
    "motion_kinds",
    "steady_every_s",
    "steady_similarity",
)


def make(**changes) -> BFlowTokenizer:
    return BFlowTokenizer(BFlowConfig(dim=D, grid=GRID, **changes)).eval()


def times(num_frames: int) -> torch.Tensor:
    return torch.arange(num_frames, dtype=torch.float64) / FPS


def scene(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random background ``[h, w, D]`` and two object values ``[2, D]``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*GRID, D, generator=g), torch.randn(2, D, generator=g)


def block_path(cols: list[int], row: int = 4, side: int = 3, seed: int = 0) -> torch.Tensor:
    """``[T, P, D]``: one ``side x side`` block at ``row``, at column ``cols[t]`` in frame ``t``."""
    background, things = scene(seed)
    frames = []
    for col in cols:
        frame = background.clone()
        frame[row : row + side, col : col + side] = things[0]
        frames.append(frame.reshape(P, D))
    return torch.stack(frames)


def patches_of(rows: range, cols: range) -> set[int]:
    return {r * GRID[1] + c for r in rows for c in cols}


def test_a_stop_reaches_the_tokens_within_one_frame():
    """A 3x3 block moves 2 patches a frame (12 changed patches per frame, more than the cap of 8), then stops. In
    region mode the frame after the stop has no token; patch mode is still paying off its backlog there."""
    cols = [0, 2, 4, 6, 8] + [8] * 6  # the block reaches its final place in frame 4
    x, ts = block_path(cols), times(len(cols))
    region = make(**REGION).tokenize(x, ts)
    assert [f.kind for f in region.frames[1:5]] == ["flow"] * 4
    assert region.n_tokens[5:] == [0] * 6, region.n_tokens
    patch = make().tokenize(x, ts)
    assert patch.n_tokens[1:5] == [8] * 4 and patch.n_tokens[5] > 0, patch.n_tokens  # the old mode's backlog


def test_a_rendered_stop_reaches_the_tokens_within_one_frame():
    """The same on the demo's encoder (EfficientNet-Lite0 cut at stride 8, 96 px, 2 fps) and a rendered circle moving
    at the synthetic set's speed (30 px/s) that stops at 2.0 s: region mode is silent from the next frame on."""
    from mmduplex.data.synthetic import render_video
    from mmduplex.data.synthetic_world import ShapeTrack, VideoSpec
    from mmduplex.tokenizer.encoders.factory import create_encoder

    track = ShapeTrack(0, "circle", 20.0, ((0.0, 15.0, 40.0), (2.0, 75.0, 40.0), (6.0, 75.0, 40.0)), ((0.0, "red"),))
    spec = VideoSpec("stop", 60, 10.0, 96, 96, background_seed=3, shapes=(track,))
    frames = torch.from_numpy(render_video(spec)[::5].copy())  # 2 fps: t = 0, 0.5, ..., 5.5; the stop is frame 4
    encoder = create_encoder("efficientnet-lite0-s8", device="cpu")
    with torch.inference_mode():
        patches = encoder.encode(frames).patches
    ts = torch.arange(12, dtype=torch.float64) / 2.0
    config = {"dim": encoder.width, "grid": encoder.grid, "max_tokens_per_frame": 20, "max_keyframe_interval_s": 8.0}
    region = BFlowTokenizer(BFlowConfig(**config, **REGION)).eval().tokenize(patches, ts)
    assert all(n > 0 for n in region.n_tokens[1:5]), region.n_tokens  # it moves: tokens every frame
    assert region.n_tokens[5:] == [0] * 7, region.n_tokens
    patch = BFlowTokenizer(BFlowConfig(**config)).eval().tokenize(patches, ts)
    assert patch.n_tokens[5] > 0, patch.n_tokens


@pytest.mark.parametrize(("shape", "before", "after"), [("square", "green", "yellow"), ("circle", "red", "green")])
def test_a_still_shapes_colour_change_reaches_the_tokens_within_one_frame(shape, before, after):
    """At the demo recipe's settings (``recipes/tokenizer/lite0_s8_region.yaml``, on its encoder at 5 fps) a still
    shape that changes colour gets a token in the frame after the change and none later; at ``flow_threshold`` 0.4
    (the value before it was chosen on val) the change never reaches the tokens."""
    import yaml

    from mmduplex.data.synthetic import render_video
    from mmduplex.data.synthetic_world import ShapeTrack, VideoSpec
    from mmduplex.recipes import recipe_path
    from mmduplex.tokenizer.encoders.factory import create_encoder

    recipe = yaml.safe_load(recipe_path("tokenizer/lite0_s8_region").read_text(encoding="utf-8"))
    config = dict(recipe["model"]["init_args"]["config"])
    track = ShapeTrack(0, shape, 20.0, ((0.0, 48.0, 48.0), (6.0, 48.0, 48.0)), ((0.0, before), (2.0, after)))
    spec = VideoSpec("turn", 100, 25.0, 96, 96, background_seed=1, shapes=(track,))
    frames = torch.from_numpy(render_video(spec)[::5][:16].copy())  # 5 fps: t = 0, 0.2, ..., 3.0; the change: frame 10
    encoder = create_encoder("efficientnet-lite0-s8", device="cpu")
    assert (encoder.width, list(encoder.grid)) == (config["dim"], list(config["grid"]))
    with torch.inference_mode():
        patches = encoder.encode(frames).patches
    ts = times(16)
    tokens = BFlowTokenizer(BFlowConfig(**config)).eval().tokenize(patches, ts)
    assert tokens.frames[10].kind == "flow" and tokens.n_tokens[10] >= 1, tokens.n_tokens
    assert tokens.n_tokens[1:10] == [0] * 9 and tokens.n_tokens[11:] == [0] * 5, tokens.n_tokens
    before_choice = BFlowTokenizer(BFlowConfig(**{**config, "flow_threshold": 0.4})).eval().tokenize(patches, ts)
    assert before_choice.n_tokens[1:] == [0] * 15, before_choice.n_tokens


def test_a_region_token_covers_a_moving_object_whole():
    """A 2x2 block moving two patches a frame: one token per frame, covering where it was and where it is, placed and
    valued where it is now once its keyframe place is behind it (pooling weighted by what differs from the
    keyframe)."""
    cols = [0, 2, 4, 6, 8, 10]
    x, ts = block_path(cols, row=5, side=2), times(len(cols))
    tok = make(**REGION)
    out, trail = tok.trace(x, ts)
    block = normalize_features(x[0, 5 * GRID[1]])
    for i in range(1, len(cols)):
        assert out.n_tokens[i] == 1, out.n_tokens
        covered = set(trail[i].flow_patches[0].nonzero().flatten().tolist())
        assert covered == patches_of(range(5, 7), range(cols[i - 1], cols[i] + 2)), (i, sorted(covered))
        if i >= 2:
            assert out.frames[i].positions.item() in patches_of(range(5, 7), range(cols[i], cols[i] + 2))
            assert torch.cosine_similarity(trail[i].flow_values[0], block, dim=0) > 0.9
    tiles = make(**REGION, region_max=2).tokenize(x, ts)  # tiles of 2x2 patches: the same change as 2 tokens
    assert tiles.n_tokens[1:] == [2] * 5


def test_two_objects_whose_changes_touch_get_a_token_each():
    """Two blocks moving side by side with a faint change between them (an encoder's receptive field): hysteresis
    joins the faint cells into one changed region, split again between the two blobs that are new since the
    keyframe; without the split (``region_split: None``) they share one token."""
    background, things = scene(1)
    frames = []
    noise = torch.randn(GRID[1], D, generator=torch.Generator().manual_seed(2))
    for t in range(5):  # both 2x2 blocks move two patches a frame
        frame = background.clone()
        frame[2:4, 2 * t : 2 * t + 2] = things[0]  # rows 2-3
        frame[5:7, 2 * t : 2 * t + 2] = things[1]  # rows 5-6
        if t:  # row 4 between them changes a little (1 - cos ~ 0.3: above region_grow * threshold, below threshold)
            span = slice(2 * t - 2, 2 * t + 2)
            frame[4, span] = 0.7 * background[4, span] + 0.7 * noise[span] * (-1) ** t
        frames.append(frame.reshape(P, D))
    x, ts = torch.stack(frames), times(5)
    split = make(**REGION, region_max=None).trace(x, ts)[1]
    whole = make(**REGION, region_max=None, region_split=None).trace(x, ts)[1]
    for i in range(1, 5):
        assert whole[i].flow_patches.shape[0] == 1
        assert split[i].flow_patches.shape[0] == 2
        regions = [set(m.nonzero().flatten().tolist()) for m in split[i].flow_patches]
        a, b = patches_of(range(2, 4), range(2 * i, 2 * i + 2)), patches_of(range(5, 7), range(2 * i, 2 * i + 2))
        assert any(r >= a and not r & b for r in regions) and any(r >= b and not r & a for r in regions), regions


def test_a_stop_among_moving_objects_is_a_token_in_the_next_frame():
    """Two blocks move; the upper one stops. Without ``stop_tokens`` the stop is only an absence (the frame after it
    holds the lower block's token alone, whichever block stopped); with them, that frame also holds a ``still``
    token where the upper block came to rest, and only that frame (the next refresh is the timer's). While both move,
    and where a block leaves the frame (what is there again is the keyframe's background), nothing is added."""
    background, things = scene(4)
    frames = []
    for t in range(9):
        frame = background.clone()
        if t:  # both enter after the keyframe
            upper = min(t, 3)  # moving 2 patches a frame until frame 3, then still
            frame[1:3, 2 * upper : 2 * upper + 2] = things[0]
            if t < 5:  # the lower block moves right and is gone from frame 5
                frame[8:10, 3 * t : 3 * t + 2] = things[1]
        frames.append(frame.reshape(P, D))
    x, ts = torch.stack(frames), times(9)
    plain, plain_trail = make(**REGION, region_max=None).trace(x, ts)
    told, told_trail = make(**REGION, region_max=None, stop_tokens=True).trace(x, ts)
    assert plain.n_tokens[4] == 1 and not plain_trail[4].flow_still.any()  # the lower block only
    assert told.n_tokens[4] == 2 and told_trail[4].flow_still.tolist() == [False, True], told.n_tokens
    rested = set(told_trail[4].flow_patches[1].nonzero().flatten().tolist())
    assert rested == patches_of(range(1, 3), range(6, 8)), sorted(rested)
    assert told.n_tokens[:4] == plain.n_tokens[:4] and told.n_tokens[5:] == plain.n_tokens[5:], told.n_tokens
    assert not any(trail.flow_still.any() for trail in told_trail[5:])


def test_a_stop_is_told_when_most_of_the_region_is_still_even_if_a_neighbour_moves_on():
    """Region 1 (4 cells) had one cell changed now (the edge of another object's change next to it): it stopped.
    Region 2 (2 cells) has both changed again: its motion goes on. Region 3 had 2 of 6 (a third): still moving."""
    moved = torch.tensor([[1, 1, 1, 1, 0, 2, 2, 3, 3, 3, 3, 3, 3]])
    touched = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    settled = BFlowTokenizer._settled(touched, moved)
    assert settled.tolist() == [[True] * 4 + [False] * 9]


def test_motion_kinds_say_what_the_motion_did():
    """A block stands, starts to move (frame 3), moves on, and leaves through the right edge; another block moves
    all along. With ``motion_kinds`` the first token of the standing block's motion is a ``start`` token, those after
    it ``flow`` tokens, and the frame after it has left holds a ``gone`` token that carries the block (what the
    tokens had described there), not the background. Decisions, counts and reconstruction are those without."""
    background, things = scene(5)
    frames = []
    cols = [None, 4, 4, 6, 8, 10, None, None]  # enters at frame 1 (new since the keyframe), stands, moves, leaves
    for t, col in enumerate(cols):
        frame = background.clone()
        if col is not None:
            frame[1:3, col : col + 2] = things[0]
        frame[8:10, t : t + 2] = things[1]  # the other block, 1 patch a frame
        frames.append(frame.reshape(P, D))
    x, ts = torch.stack(frames), times(len(cols))
    plain, plain_trail = make(**REGION, region_max=None).trace(x, ts)
    kinds, trail = make(**REGION, region_max=None, motion_kinds=True).trace(x, ts)
    assert kinds.n_tokens == plain.n_tokens
    torch.testing.assert_close(kinds.recon, plain.recon)
    upper = {}
    for i in range(1, len(cols)):
        for j, patches in enumerate(trail[i].flow_patches):
            if patches.reshape(*GRID)[:4].any():  # a token of the upper block
                upper[i] = (int(trail[i].flow_motion[j]), trail[i].flow_before[j], kinds.frames[i].tokens[j])
    assert {i: m for i, (m, _, _) in upper.items()} == {1: 1, 3: 1, 4: 0, 5: 0, 6: 2}, upper
    block = normalize_features(x[1, 1 * GRID[1] + 4])
    _, before, token = upper[6]
    assert torch.cosine_similarity(before, block, dim=0) > 0.5
    plain_token = plain.frames[6].tokens[[bool(p.reshape(*GRID)[:4].any()) for p in plain_trail[6].flow_patches]][0]
    assert torch.cosine_similarity(token, block, dim=0) > torch.cosine_similarity(plain_token, block, dim=0) + 0.2


def test_steady_motions_wait_and_the_frame_of_an_event_holds_the_acting_object_alone():
    """Two blocks move right, a patch a frame; the upper one stops (frame 4), the lower one changes its look (frame
    5) and moves on. With ``steady_every_s`` a motion that goes on unchanged gets a token only once a second: the
    frame of the stop holds the upper block's ``still`` token alone (without the option, the lower block's token
    too), the frame of the change of look holds the lower block's token at once, and the lower block's next token
    comes a second after that one. Where the motions start (frame 1) both get a token."""
    background, things = scene(4)
    new_look = torch.randn(D, generator=torch.Generator().manual_seed(9))
    frames = []
    for t in range(12):
        frame = background.clone()
        if t:  # both enter after the keyframe
            frame[1:3, min(t, 3)] = things[0]  # moves until frame 3, then stands
            frame[8:10, t] = things[1] if t < 5 else new_look
        frames.append(frame.reshape(P, D))
    x, ts = torch.stack(frames), times(12)
    every, every_trail = make(**REGION, region_max=None, stop_tokens=True).trace(x, ts)
    steady, trail = make(**REGION, region_max=None, stop_tokens=True, steady_every_s=1.0).trace(x, ts)
    assert every.n_tokens[1:] == [2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1], every.n_tokens
    assert every_trail[4].flow_still.tolist() == [False, True]  # the stop, and the lower block's motion
    assert steady.n_tokens[1:] == [2, 0, 0, 1, 1, 0, 0, 0, 0, 1, 0], steady.n_tokens
    assert trail[4].flow_still.tolist() == [True]
    assert set(trail[4].flow_patches[0].nonzero().flatten().tolist()) == patches_of(range(1, 3), range(3, 4))
    for i in (5, 10):  # the lower block's new look at once, then a second later
        assert not trail[i].flow_still.any()
        assert set(trail[i].flow_patches[0].nonzero().flatten().tolist()) >= patches_of(range(8, 10), range(i, i + 1))
    # without the option the state carries no memory of the motions (nothing stacked or split per streamed step)
    assert make(**REGION).init_state(2).motion_value.shape == (2, 0, D)
    assert make(**REGION, steady_every_s=1.0).init_state(2).motion_sent.shape == (2, P)
    # a period under the frame interval holds nothing back: the tokens of the plain region mode
    assert make(**REGION, steady_every_s=0.1).tokenize(x, ts).n_tokens == make(**REGION).tokenize(x, ts).n_tokens


def test_steady_motion_needs_region_mode_and_a_cosine():
    with pytest.raises(InputError, match="steady_every_s"):
        make(steady_every_s=1.0)
    with pytest.raises(InputError, match="steady_every_s"):
        make(**REGION, steady_every_s=0.0)
    with pytest.raises(InputError, match="steady_similarity"):
        make(**REGION, steady_every_s=1.0, steady_similarity=1.5)


@pytest.mark.parametrize("upper_stops", [False, True])
def test_position_order_sends_the_same_tokens_in_raster_order(upper_stops):
    """Two blocks move at once, the lower one larger and faster (the larger change, so first in ``score`` order). With
    ``flow_order: position`` every frame sends the same tokens, decisions and reconstruction, but the upper block's
    token first in every frame: an object keeps its slot while the objects do not pass each other. Also when the
    upper block has stopped and is refreshed as a ``still`` token (which ``score`` order puts after every change):
    each token keeps its own kind, value and position."""
    background, things = scene(3)
    frames = []
    for t in range(4):
        frame = background.clone()
        if not upper_stops:
            frame[1:3, 2 * t : 2 * t + 2] = things[0]  # upper 2x2 block, 2 patches a frame
        elif t:
            frame[1:3, 2:4] = things[0]  # appears in frame 1 and stays
        if t or not upper_stops:  # (both new since the keyframe when the upper one stops)
            frame[8:11, 3 * t : 3 * t + 3] = things[1]  # lower 3x3 block, 3 patches a frame
        frames.append(frame.reshape(P, D))
    x, ts = torch.stack(frames), times(4)
    settings = {**REGION, "region_max": None, "refresh_interval_s": 0.1 if upper_stops else None}
    by_score, score_trail = make(**settings).trace(x, ts)
    by_position, position_trail = make(**settings, flow_order="position").trace(x, ts)
    assert by_score.n_tokens == by_position.n_tokens and by_score.n_tokens[1:] == [2] * 3, by_score.n_tokens
    torch.testing.assert_close(by_position.recon, by_score.recon)
    for score_frame, position_frame in zip(by_score.frames[1:], by_position.frames[1:], strict=True):
        rows = [int(p) // GRID[1] for p in position_frame.positions]
        assert rows[0] < 3 < 8 <= rows[1], rows  # upper block first
        assert [int(p) // GRID[1] for p in score_frame.positions][0] >= 8  # the larger change first
        torch.testing.assert_close(position_frame.tokens, score_frame.tokens.flip(0))
        torch.testing.assert_close(position_frame.positions, score_frame.positions.flip(0))
    still = [trail[i].flow_still.tolist() for trail in (score_trail, position_trail) for i in (2, 3)]
    assert still == ([[False, True]] * 2 + [[True, False]] * 2 if upper_stops else [[False, False]] * 4), still


def test_two_rendered_shapes_moving_close_get_a_token_each_when_split_at_peaks():
    """Two shapes move side by side a shape's width apart on the demo's encoder and tokenizer recipe (5 fps): their
    changes in the stride-8 features run together, so split at the blobs new since the keyframe (the recipe) they share
    one token in most frames (each token then pools both colours and shapes); split at the local peaks of that
    novelty, each has a token of its own in most frames."""
    import yaml

    from mmduplex.data.synthetic import render_video
    from mmduplex.data.synthetic_world import ShapeTrack, VideoSpec
    from mmduplex.recipes import recipe_path
    from mmduplex.tokenizer.encoders.factory import create_encoder

    recipe = yaml.safe_load(recipe_path("tokenizer/lite0_s8_region").read_text(encoding="utf-8"))
    config = dict(recipe["model"]["init_args"]["config"])
    a = ShapeTrack(0, "circle", 20.0, ((0.0, 30.0, 12.0), (2.5, 30.0, 87.0)), ((0.0, "red"),))
    b = ShapeTrack(1, "square", 20.0, ((0.0, 62.0, 12.0), (2.5, 62.0, 87.0)), ((0.0, "blue"),))
    spec = VideoSpec("pair", 75, 25.0, 96, 96, background_seed=2, shapes=(a, b))
    frames = torch.from_numpy(render_video(spec)[::5][:13].copy())  # 5 fps, to 2.4 s; both move down 30 px/s
    encoder = create_encoder("efficientnet-lite0-s8", device="cpu")
    with torch.inference_mode():
        patches = encoder.encode(frames).patches
    ts = times(13)
    centres = [[(int(s.position(t)[1] / 8), int(s.position(t)[0] / 8)) for s in (a, b)] for t in ts.tolist()]

    def own_tokens(split_at: str) -> list[int]:
        tok = BFlowTokenizer(BFlowConfig(**{**config, "split_at": split_at})).eval()
        _, trail = tok.trace(patches, ts)
        counts = []
        for i in range(1, 13):
            cells = [r * GRID[1] + c for r, c in centres[i]]
            held = [m.tolist() for m in trail[i].flow_patches]
            counts.append(sum(any(m[c] and not m[o] for m in held) for c, o in (cells, cells[::-1])))
        return counts  # per frame: how many of the two shapes have a token that holds its centre and not the other's

    blobs, peaks = own_tokens("blobs"), own_tokens("peaks")
    assert sum(n == 2 for n in peaks) >= 8 and sum(n == 2 for n in blobs) <= 2, (blobs, peaks)  # of 12 frames


def test_a_still_object_is_refreshed_between_keyframes():
    """After a block stops, ``refresh_interval_s`` brings it back as a ``still`` token (its own kind embedding) at
    most one interval later, and again every interval; without the refresh nothing comes until the keyframe."""
    cols = [0, 2, 4] + [4] * 17  # stops in frame 2; 4 s of still block after it
    x, ts = block_path(cols), times(len(cols))
    refreshed = make(**REGION, refresh_interval_s=1.0)
    out, trail = refreshed.trace(x, ts)
    still_frames = [i for i, d in enumerate(trail) if bool(d.flow_still.any())]
    assert still_frames == [5, 10, 15], still_frames  # every 1 s (5 frames) from the keyframe on
    block = patches_of(range(4, 7), range(4, 7))
    for i in still_frames:
        assert trail[i].flow_still.all() and out.frames[i].kind == "flow"
        regions = [set(m.nonzero().flatten().tolist()) for m in trail[i].flow_patches]
        assert block in regions, regions  # (the block's keyframe place, now background, is refreshed too)
        value, embedding = trail[i].flow_values, trail[i].flow_embedding
        since = float(trail[i].since_key_s[0])
        assert torch.equal(out.frames[i].tokens, refreshed.embedder(value, "still", since, embedding))
        assert not torch.allclose(out.frames[i].tokens, refreshed.embedder(value, "flow", since, embedding))
    assert make(**REGION).tokenize(x, ts).n_tokens[3:] == [0] * 17


def test_bundles_written_before_flow_mode_load_and_behave_unchanged(tmp_path):
    """An old bundle / Lightning checkpoint (a config without the new keys) loads as patch mode and emits exactly what
    patch mode emits; patch mode's decisions are pinned to those of the code before region mode existed."""
    g = torch.Generator().manual_seed(3)
    background, things = torch.randn(*GRID, D, generator=g), torch.randn(3, D, generator=g)
    starts = torch.randint(0, GRID[0] - 2, (3, 2), generator=g)
    frames = []
    for t in range(12):
        frame = background.clone()
        for k in range(3):
            col = int(starts[k, 1]) + t % 8
            frame[int(starts[k, 0]) : int(starts[k, 0]) + 2, col : col + 2] = things[k]
        frames.append(frame.reshape(P, D))
    x, ts = torch.stack(frames), times(12)
    tok = make(target_rate=20.0)
    with torch.no_grad():
        for param in tok.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=g))
    expected = tok.tokenize(x, ts)
    tok.save_pretrained(tmp_path / "bundle")
    meta = json.loads((tmp_path / "bundle" / "config.json").read_text())
    for key in NEW_KEYS:
        del meta["config"][key]
    (tmp_path / "bundle" / "config.json").write_text(json.dumps(meta))
    old = BFlowTokenizer.from_pretrained(tmp_path / "bundle")
    assert old.config == tok.config and old.config.flow_mode == "patch"
    state = {f"tokenizer.{k}": v for k, v in tok.state_dict().items()}
    torch.save({"mmduplex_kind": BUNDLE_KIND, "bflow_config": meta["config"], "state_dict": state}, tmp_path / "a.ckpt")
    for loaded in (old, BFlowTokenizer.from_checkpoint(tmp_path / "a.ckpt")):
        out = loaded.tokenize(x, ts)
        assert out.n_tokens == expected.n_tokens
        for a, b in zip(out.frames, expected.frames, strict=True):
            assert torch.equal(a.tokens, b.tokens) and torch.equal(a.positions, b.positions)
        assert torch.equal(out.recon, expected.recon)
    # pinned: patch mode's decisions on this input, as the code before flow_mode made them
    assert expected.n_tokens == [16, 4, 4, 3, 5, 4, 3, 4, 5, 4, 4, 4], expected.n_tokens
    assert [f.positions.tolist() for f in expected.frames[1:3]] == [[5, 53, 41, 51], [16, 84, 18, 4]]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"flow_mode": "blobs"}, "flow_mode='blobs' must be one of"),
        ({**REGION, "region_grow": 0.0}, "region_grow=0.0 must be in"),
        ({**REGION, "region_max": 0}, "region_max=0 must be >= 1"),
        ({**REGION, "region_split": 0.0}, "region_split=0.0 must be > 0"),
        ({"refresh_interval_s": 2.0}, "needs flow_mode 'region'"),
        ({**REGION, "refresh_interval_s": 0.0}, "must be > 0"),
        ({"flow_order": "position"}, "needs region mode"),
        ({"stop_tokens": True}, "stop_tokens needs flow_mode 'region'"),
        ({"motion_kinds": True}, "motion_kinds needs flow_mode 'region'"),
        ({**REGION, "split_at": "edges"}, "split_at='edges' must be one of"),
        ({**REGION, "flow_order": "size"}, "must be one of"),
    ],
)
def test_bad_region_settings_raise_input_error(changes, message):
    with pytest.raises(InputError, match=message):
        make(**changes)


@pytest.mark.parametrize("split_at", ["blobs", "peaks"])
def test_region_mode_keeps_the_real_footage_targets(split_at):
    """``mmduplex tokenize``'s targets for its untrained defaults, in region mode (the defaults plus ``flow_mode:
    region`` and a 2 s refresh) on real ImageNet features at 5 fps: <= 32 tokens/s on every shipped mp4 (camera
    motion does not flood the stream); static costs nothing after its keyframe, slow drift a little, fast motion
    more."""
    from mmduplex.data.samples import sample_videos
    from mmduplex.data.synthetic import make_motion_video
    from mmduplex.io.video import read_video
    from mmduplex.tokenizer.encoders.factory import create_encoder

    encoder = create_encoder("efficientnet-lite0", device="cpu")
    settings = {"refresh_interval_s": 2.0, "split_at": split_at, **REGION}
    tokenizer = BFlowTokenizer(BFlowConfig(dim=encoder.width, grid=encoder.grid, **settings))
    for name, path in sample_videos().items():
        clip = read_video(path, fps=5.0)
        with torch.inference_mode():
            out = tokenizer.eval().tokenize(encoder.encode(torch.as_tensor(clip.frames)).patches, clip.timestamps)
        duration = len(clip.timestamps) / 5.0
        assert out.tokens_total / duration <= 32.0, (name, out.tokens_total / duration)
    stamps = torch.arange(50, dtype=torch.float64) / 5.0
    rates = []
    for speed, shapes in ((0.0, 2), (6.0, 1), (150.0, 3)):  # px/s at 192 px: static, slow drift, fast motion
        frames = torch.from_numpy(make_motion_video(50, 5.0, speed, num_shapes=shapes, size=encoder.image_size, seed=5))
        with torch.inference_mode():
            rates.append(tokenizer.tokenize(encoder.encode(frames).patches, stamps).tokens_after_first_key / 10.0)
    assert rates[0] == 0.0 and rates[0] < rates[1] < rates[2], rates
