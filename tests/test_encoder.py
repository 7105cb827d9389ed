"""The frozen CLIP encoder: presets, shapes, determinism, preprocessing, checkpoints and errors."""

from __future__ import annotations

import json
import logging

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from mmduplex.errors import CheckpointError, InputError
from mmduplex.tokenizer.encoders.factory import INIT_SEED, _weights_sha256, create_encoder, spec_of_fingerprint


@pytest.fixture(scope="module")
def tiny():
    return create_encoder("mmduplex-tiny", device="cpu")


def _frames(t: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (t, h, w, 3), dtype=torch.uint8, generator=generator)  # [T, H, W, 3]


def _full_clip(name: str, seed: int) -> torch.nn.Module:
    """A whole open_clip model (text tower included), as a user's checkpoint would hold it."""
    create_encoder(name, device="cpu")  # registers the presets
    torch.manual_seed(seed)
    return open_clip.create_model(name)


def test_tiny_preset_shapes(tiny):
    assert (tiny.image_size, tiny.grid, tiny.num_patches) == (96, (12, 12), 144)
    assert (tiny.width, tiny.embed_dim) == (64, 64)
    out = tiny.encode(_frames(5, 120, 160), batch_size=2)
    assert out.patches.shape == (5, 144, 64) and out.patches.dtype == torch.float32
    assert out.pooled.shape == (5, 64) and out.pooled.dtype == torch.float32
    whole = tiny.encode(_frames(5, 120, 160), batch_size=64)
    torch.testing.assert_close(out.patches, whole.patches, rtol=1e-5, atol=1e-5)  # batching does not matter
    assert tiny.encode(_frames(0, 96, 96)).patches.shape == (0, 144, 64)


def test_frozen_eval_no_grad(tiny):
    tiny.train()
    assert not tiny.training and not tiny.visual.training
    assert not any(p.requires_grad for p in tiny.parameters())
    out = tiny.encode(_frames(2, 96, 96))
    assert not out.patches.requires_grad


def test_build_is_deterministic_and_leaves_caller_rng_alone(tiny):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    again = create_encoder("mmduplex-tiny", device="cpu")
    assert torch.equal(torch.rand(3), expected), "building an encoder consumed the caller's RNG"
    assert again.fingerprint == tiny.fingerprint
    frames = _frames(3, 96, 96)
    assert torch.equal(again.encode(frames).patches, tiny.encode(frames).patches)
    assert set(tiny.fingerprint) == {"model", "pretrained", "weights_sha256", "image_size"}
    assert tiny.fingerprint["model"] == "mmduplex-tiny" and tiny.fingerprint["pretrained"] is None


def test_fingerprint_differs_between_presets(tiny):
    micro = create_encoder("mmduplex-micro", device="cpu")
    assert micro.fingerprint != tiny.fingerprint
    assert micro.fingerprint["weights_sha256"] != tiny.fingerprint["weights_sha256"]
    assert micro.encode(_frames(2, 40, 50)).patches.shape == (2, micro.num_patches, micro.width)


def test_preprocess_resizes_shorter_side_and_centre_crops(tiny):
    # A 3:1 frame: red left third, blue centre, green right third. After the shorter side goes to 96 and the
    # centre 96 x 96 is cropped, only blue remains.
    frame = torch.zeros(1, 64, 192, 3, dtype=torch.uint8)  # [1, H, W, 3]
    frame[:, :, :64, 0] = 255
    frame[:, :, 64:128, 2] = 255
    frame[:, :, 128:, 1] = 255
    x = tiny.preprocess(frame)  # [1, 3, 96, 96]
    assert x.shape == (1, 3, 96, 96)
    pixels = x * tiny.std + tiny.mean  # back to [0, 1]
    torch.testing.assert_close(pixels[0, :, 10:-10, 10:-10].mean(dim=(1, 2)), torch.tensor([0.0, 0.0, 1.0]))
    # Frames already at the model size are only normalised.
    square = _frames(2, 96, 96)
    expected = (square.permute(0, 3, 1, 2).float() / 255 - tiny.mean) / tiny.std
    torch.testing.assert_close(tiny.preprocess(square), expected)


def test_local_weights_file_and_folder_match_open_clip(tmp_path, tiny):
    model = _full_clip("mmduplex-tiny", seed=5).eval()
    weights = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    from_file = create_encoder(f"mmduplex-tiny:{weights}", device="cpu")
    assert from_file.fingerprint["weights_sha256"] == _weights_sha256(model.visual)
    assert from_file.fingerprint["weights_sha256"] != tiny.fingerprint["weights_sha256"]
    assert from_file.fingerprint["pretrained"] == "weights.safetensors"

    frames = _frames(2, 96, 96)
    out = from_file.encode(frames)
    with torch.no_grad():
        reference = model.encode_image(from_file.preprocess(frames))  # open_clip's own pooled embedding
    torch.testing.assert_close(out.pooled, reference, rtol=1e-5, atol=1e-5)

    folder = tmp_path / "clip"  # open_clip's local-dir layout: config + weights
    folder.mkdir()
    config = {"model_cfg": open_clip.get_model_config("mmduplex-tiny"), "preprocess_cfg": {}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    (folder / "open_clip_model.safetensors").write_bytes(weights.read_bytes())
    from_folder = create_encoder(str(folder), device="cpu")
    assert from_folder.fingerprint["weights_sha256"] == from_file.fingerprint["weights_sha256"]
    torch.testing.assert_close(from_folder.encode(frames).patches, out.patches)


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="no-such-model: unknown encoder"):
        create_encoder("no-such-model")
    missing = tmp_path / "missing.bin"
    with pytest.raises(CheckpointError, match="missing.bin: no such checkpoint file"):
        create_encoder(f"mmduplex-tiny:{missing}")
    with pytest.raises(CheckpointError, match="not-a-tag"):
        create_encoder("mmduplex-tiny:not-a-tag")
    micro = tmp_path / "micro.safetensors"
    save_file({k: v.contiguous() for k, v in _full_clip("mmduplex-micro", seed=1).state_dict().items()}, str(micro))
    with pytest.raises(CheckpointError, match=r"micro.safetensors: cannot load as mmduplex-tiny"):
        create_encoder(f"mmduplex-tiny:{micro}")  # weights of another shape
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.bin"):
        create_encoder(f"mmduplex-tiny:{garbage}")
    with pytest.raises(CheckpointError, match="needs its model"):
        create_encoder(str(garbage))  # a bare weights file: which model?
    with pytest.raises(CheckpointError, match="open_clip_config.json"):
        create_encoder(f"local-dir:{tmp_path}")


def test_bad_frames_are_refused(tiny):
    with pytest.raises(InputError, match="uint8"):
        tiny.encode(torch.zeros(2, 96, 96, 3))
    with pytest.raises(InputError, match=r"\[T, H, W, 3\]"):
        tiny.encode(torch.zeros(96, 96, 3, dtype=torch.uint8))
    with pytest.raises(InputError, match="batch_size"):
        tiny.encode(_frames(1, 96, 96), batch_size=0)


def test_seed_constant_is_the_documented_one():
    # Changing INIT_SEED changes every cached fingerprint; it is part of the cache format.
    assert INIT_SEED == 0


def test_bare_open_clip_name_is_an_error_that_lists_the_forms():
    """A bare open_clip name used to build random weights without a word: now it asks for the weights."""
    with pytest.raises(CheckpointError) as info:
        create_encoder("ViT-B-32", device="cpu")
    message = str(info.value)
    assert message.startswith("ViT-B-32: an open_clip model name needs its weights")
    for form in ("ViT-B-32:TAG", "openai", "ViT-B-32:/path/to/weights", "ViT-B-32:random", "efficientnet-lite0"):
        assert form in message, form
    with pytest.raises(CheckpointError, match="unknown encoder 'ViT-Q-99'.*MODEL:random"):
        create_encoder("ViT-Q-99", device="cpu")


def test_random_weights_only_when_named_and_without_open_clip_chatter(tiny, caplog):
    """Presets and ``MODEL:random`` are random by name: the same seeded weights, no "initialized randomly" warning
    from open_clip (its factory is not used for them; nothing filters its log)."""
    with caplog.at_level(logging.DEBUG):
        named = create_encoder("mmduplex-tiny:random", device="cpu")
    assert named.fingerprint == tiny.fingerprint and named.fingerprint["pretrained"] is None
    assert not [r for r in caplog.records if "open_clip" in r.pathname], [r.getMessage() for r in caplog.records]
    assert logging.getLogger().filters == []


def test_spec_of_fingerprint_rebuilds_the_encoder(tiny):
    """Bundles and caches record the fingerprint; it names the encoder again, ``MODEL:random`` for a random open_clip
    model recorded when a bare name meant random weights (the weights, hence the fingerprint, are unchanged)."""
    assert spec_of_fingerprint(tiny.fingerprint) == "mmduplex-tiny"
    assert create_encoder(spec_of_fingerprint(tiny.fingerprint), device="cpu").fingerprint == tiny.fingerprint
    old_vit = {"model": "ViT-B-16", "pretrained": None, "weights_sha256": "0" * 64, "image_size": 224}
    assert spec_of_fingerprint(old_vit) == "ViT-B-16:random"
    assert spec_of_fingerprint({"model": "ViT-B-16", "pretrained": "openai"}) == "ViT-B-16:openai"
    assert spec_of_fingerprint({"model": "efficientnet-lite0-s8", "pretrained": "imagenet"}) == (
        "efficientnet-lite0-s8:imagenet"
    )
    assert spec_of_fingerprint({"model": "hf-hub:org/clip", "pretrained": "hf-hub"}) == "hf-hub:org/clip"
    assert spec_of_fingerprint({"model": "local-dir:clip", "pretrained": "local-dir"}) is None


@pytest.mark.slow
def test_vit_b32_random_init_shapes():
    encoder = create_encoder("ViT-B-32:random", device="cpu")
    assert (encoder.image_size, encoder.num_patches, encoder.width, encoder.embed_dim) == (224, 49, 768, 512)
    assert encoder.fingerprint["pretrained"] is None
    out = encoder.encode(_frames(1, 240, 320))
    assert out.patches.shape == (1, 49, 768)


# ----------------------------------------------------------------------------- the real ImageNet encoder

BOW_TIE, SUIT = 457, 834  # ImageNet-1k class indices


@pytest.fixture(scope="module")
def lite0():
    return create_encoder("efficientnet-lite0", device="cpu")


@pytest.mark.real_weights
def test_efficientnet_lite0_shapes_and_fingerprint(lite0):
    assert (lite0.image_size, lite0.grid, lite0.num_patches, lite0.width) == (192, (12, 12), 144, 112)
    frames = _frames(3, 120, 160)
    out = lite0.encode(frames, batch_size=2)
    assert out.patches.shape == (3, 144, 112) and out.pooled.shape == (3, 112)
    torch.testing.assert_close(out.patches, lite0.encode(frames).patches, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.pooled, out.patches.mean(1))
    fingerprint = lite0.fingerprint
    assert fingerprint["model"] == "efficientnet-lite0" and fingerprint["pretrained"] == "imagenet"
    assert create_encoder("efficientnet-lite0:imagenet", device="cpu").fingerprint == fingerprint
    lite0.train()
    assert not lite0.training and not any(p.requires_grad for p in lite0.parameters())


@pytest.mark.real_weights
def test_efficientnet_lite0_knows_imagenet(lite0):
    """The weights are the real ImageNet ones: the man in `carphone` wears a bow tie and a suit."""
    from mmduplex.data.samples import sample_videos
    from mmduplex.io.video import read_video

    clip = read_video(sample_videos()["carphone"], fps=2.0)
    top = lite0.classify(clip.frames[:4]).topk(2, dim=-1).indices  # [4, 2]
    assert all(int(row[0]) in (BOW_TIE, SUIT) for row in top), top.tolist()
    random = lite0.classify(_frames(4, 144, 176)).argmax(-1)
    assert not all(int(c) in (BOW_TIE, SUIT) for c in random)  # noise is not a suit


def _timm_map(encoder, size: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``encoder``'s patches and timm's own tf_efficientnet_lite0 (the registry's weights, batch norms unfolded)
    intermediate map ``index`` on the same two preprocessed ``size`` px frames."""
    import timm
    from safetensors.torch import load_file

    from mmduplex.weights import get_weights

    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    reference.load_state_dict(load_file(str(get_weights("efficientnet-lite0") / "model.safetensors")))
    images = encoder.preprocess(_frames(2, size, size))
    with torch.inference_mode():
        feature_map = reference.forward_intermediates(images, indices=[index], intermediates_only=True)[0]
        patches, _ = encoder(images)
    return patches, feature_map


@pytest.mark.real_weights
def test_efficientnet_folded_batchnorm_matches_timm(lite0):
    """The encoder folds its batch norms into the convolutions: the same outputs as timm's own model."""
    patches, stride16 = _timm_map(lite0, 192, 3)
    assert stride16.shape == (2, 112, 12, 12)
    torch.testing.assert_close(patches, stride16.flatten(2).transpose(1, 2), rtol=1e-3, atol=1e-3)


@pytest.mark.real_weights
def test_efficientnet_lite0_stride8_cut_matches_timm(lite0):
    """``efficientnet-lite0-s8``: the same weights cut after the stride-8 stage at 96 px: timm's stride-8 map, the
    same 12 x 12 grid, its own fingerprint (a cache made by one is refused by the other)."""
    s8 = create_encoder("efficientnet-lite0-s8", device="cpu")
    assert (s8.image_size, s8.grid, s8.num_patches, s8.width) == (96, (12, 12), 144, 40)
    assert s8.fingerprint["weights_sha256"] == lite0.fingerprint["weights_sha256"]
    assert s8.fingerprint != lite0.fingerprint and s8.fingerprint["feature_stride"] == 8
    patches, stride8 = _timm_map(s8, 96, 2)
    assert stride8.shape == (2, 40, 12, 12)
    torch.testing.assert_close(patches, stride8.flatten(2).transpose(1, 2), rtol=1e-3, atol=1e-3)


@pytest.mark.real_weights
def test_efficientnet_local_weights_file(lite0, tmp_path):
    from mmduplex.weights import get_weights

    folder = get_weights("efficientnet-lite0")
    local = create_encoder(f"efficientnet-lite0:{folder / 'model.safetensors'}", device="cpu")
    assert local.fingerprint["weights_sha256"] == lite0.fingerprint["weights_sha256"]
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        create_encoder(f"efficientnet-lite0:{bad}", device="cpu")
    with pytest.raises(CheckpointError, match="no such weights file"):
        create_encoder(f"efficientnet-lite0:{tmp_path / 'missing.safetensors'}", device="cpu")
