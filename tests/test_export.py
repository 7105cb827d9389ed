"""Export: checkpoint -> inference bundle -> load_bundle gives the same logits; wrong kinds are refused."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
from conftest import duplex_fit_args, one_torch_thread

from mmduplex.cli import main
from mmduplex.errors import CheckpointError
from mmduplex.lm.bundle import export_bundle, load_bundle
from mmduplex.tokenizer.bflow import BFlowConfig, BFlowTokenizer
from mmduplex.train.lightning_cli import run_cli


@pytest.fixture(autouse=True)
def _one_torch_thread():
    with one_torch_thread():
        yield


def random_inputs(model, steps=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(0, model.vocab_size, (2, steps), generator=g)
    slots = torch.randn(2, steps, model.slots_per_step, model.token_dim, generator=g)
    mask = torch.rand(2, steps, model.slots_per_step, generator=g) > 0.5
    u = model.user_slots_per_step
    asked = torch.randint(0, model.pad_id, (2, steps, u), generator=g)  # some user tokens in some slots
    user = torch.where(torch.rand(2, steps, u, generator=g) > 0.7, asked, model.pad_id)
    return text, slots, mask, user[..., 0] if u == 1 else user


def test_export_load_round_trip(tiny_duplex_run, tmp_path):
    out = tmp_path / "bundle"
    assert main(["export", str(tiny_duplex_run["checkpoint"]), "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "mmduplex-duplex" and config["format_version"] == 1
    assert config["encoder"]["model"] == "mmduplex-tiny" and config["fps"] == 2.0
    assert (config["step_hz"], config["delay_steps"], config["slots_per_step"]) == (5.0, 2, 8)
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "model.safetensors", "text_tokenizer", "video_tokenizer.safetensors"
    ]  # fmt: skip

    bundle = load_bundle(out)
    module = tiny_duplex_run["module"]
    trained = module.model.eval()
    inputs = random_inputs(trained)
    with torch.no_grad():
        torch.testing.assert_close(bundle.model(*inputs).logits, trained(*inputs).logits, rtol=0, atol=0)
    assert bundle.encoder_spec == "mmduplex-tiny" and bundle.step_hz == 5.0
    assert bundle.text_tokenizer.encode_word("red") == module.text_tokenizer.encode_word("red")
    patches = torch.randn(3, 144, 64)
    times = torch.tensor([0.0, 0.5, 1.0])
    ours, theirs = bundle.video_tokenizer.tokenize(patches, times), module.video_tokenizer.tokenize(patches, times)
    assert [f.n_tokens for f in ours.frames] == [f.n_tokens for f in theirs.frames]
    torch.testing.assert_close(ours.frames[0].tokens, theirs.frames[0].tokens)


def test_bundle_written_before_the_package_move_loads(tiny_duplex_run, tmp_path):
    """A bundle whose config names ``tokenizer.bflow.BFlowTokenizer`` (written when the tokenizer installed as a
    top-level package) loads as ``mmduplex.tokenizer.bflow.BFlowTokenizer``; a class outside the package does not."""
    out = tmp_path / "bundle"
    assert main(["export", str(tiny_duplex_run["checkpoint"]), "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["video_tokenizer"]["class_path"] == "mmduplex.tokenizer.bflow.BFlowTokenizer"
    config["video_tokenizer"]["class_path"] = "tokenizer.bflow.BFlowTokenizer"
    (out / "config.json").write_text(json.dumps(config))
    bundle = load_bundle(out)
    assert type(bundle.video_tokenizer) is BFlowTokenizer
    config["video_tokenizer"]["class_path"] = "os.path.join"
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="not in the tokenizer package"):
        load_bundle(out)


def test_wrong_kinds_are_refused(tmp_path, capsys):
    with pytest.raises(CheckpointError, match="no such bundle folder"):
        load_bundle(tmp_path / "missing")
    tokenizer_bundle = BFlowTokenizer(BFlowConfig(dim=8, grid=(2, 2), num_key_tokens=2)).save_pretrained(
        tmp_path / "bflow"
    )
    with pytest.raises(CheckpointError, match="expected a duplex model bundle"):
        load_bundle(tokenizer_bundle)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json missing"):
        load_bundle(tmp_path / "empty")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        export_bundle(junk, tmp_path / "out")
    assert main(["export", str(junk), "--out", str(tmp_path / "out")]) == 2
    assert "junk.ckpt" in capsys.readouterr().err and not (tmp_path / "out").exists()
    pickled = tmp_path / "pickled.ckpt"
    torch.save({"mmduplex_kind": "mmduplex-duplex", "evil": BFlowConfig(dim=8, grid=(2, 2), num_key_tokens=2)}, pickled)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):  # weights_only refuses the object
        export_bundle(pickled, tmp_path / "out")
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "mmduplex_kind": "something-else"}, other)
    with pytest.raises(CheckpointError, match="expected a duplex model"):
        export_bundle(other, tmp_path / "out")


def test_bflow_checkpoint_exports_a_tokenizer_bundle(tmp_path):
    tokenizer = BFlowTokenizer(BFlowConfig(dim=8, grid=(2, 2), num_key_tokens=2))
    state = {f"tokenizer.{k}": v for k, v in tokenizer.state_dict().items()}
    ckpt = tmp_path / "bflow.ckpt"
    torch.save(
        {"mmduplex_kind": "bflow-tokenizer", "bflow_config": asdict(tokenizer.config), "state_dict": state}, ckpt
    )
    assert main(["export", str(ckpt), "--out", str(tmp_path / "bundle")]) == 0
    loaded = BFlowTokenizer.from_pretrained(tmp_path / "bundle")
    assert loaded.config == tokenizer.config


UNIFORM = (
    "class_path: mmduplex.tokenizer.baselines.UniformTokenizer\n"
    "      init_args: {dim: 64, grid: [12, 12], tokens_per_frame: 4}"
)
BFLOW = "class_path: mmduplex.tokenizer.bflow.BFlowTokenizer.from_checkpoint\n      init_args: {path: %s}"


LORA = "finetune: lora\n    lora: {r: 2, alpha: 4.0}\n    video_tokenizer:\n      " + UNIFORM
COPY = "copy_dim: 8\n    video_tokenizer:\n      " + UNIFORM
COPY_MIX = "copy_dim: 8\n    copy_mode: mix\n    copy_loss_weight: 0.5\n    video_tokenizer:\n      " + UNIFORM
READOUT = "readout_dim: 4\n    readout_heads: 2\n    video_tokenizer:\n      " + UNIFORM


@pytest.mark.parametrize("which", ["uniform", "bflow_bundle", "lora", "copy", "copy_mix", "readout"])
def test_injected_video_tokenizers_round_trip(duplex_data, tmp_path, which):
    """A baseline given by class_path, a saved B-Flow loaded by a factory, and a LoRA model rebuild from the bundle
    (LoRA adapters merged into the weights at load time); a model with a copy head keeps it, its mode and targets, one
    with a slot readout keeps it."""
    if which in ("uniform", "lora", "copy", "copy_mix", "readout"):
        spec, expected = UNIFORM, "UniformTokenizer"
    else:
        config = BFlowConfig(dim=64, grid=(12, 12), num_key_tokens=4, max_flow_tokens=6)
        spec, expected = BFLOW % BFlowTokenizer(config).save_pretrained(tmp_path / "bflow"), "BFlowTokenizer"
    override = tmp_path / "tokenizer.yaml"
    model_args = {"lora": LORA, "copy": COPY, "copy_mix": COPY_MIX, "readout": READOUT}.get(
        which, f"video_tokenizer:\n      {spec}"
    )
    override.write_text(f"model:\n  init_args:\n    {model_args}\n")
    cli = run_cli(
        duplex_fit_args(duplex_data, tmp_path / "run", f"--config={override}", "--trainer.max_steps=1",
                        "--data.init_args.window_s=4.0", "--trainer.limit_val_batches=0", "--trainer.logger=false")
    )  # fmt: skip
    ckpt = next((tmp_path / "run").rglob("*.ckpt"))
    bundle = load_bundle(export_bundle(ckpt, tmp_path / "bundle"))
    assert type(bundle.video_tokenizer).__name__ == expected
    lora_b = [p for n, p in cli.model.model.named_parameters() if "lora_B" in n]
    assert (which == "lora") == bool(lora_b) and all(float(p.abs().max()) > 0 for p in lora_b)  # adapters trained
    assert (which == "lora") == any(getattr(m, "merged", False) for m in bundle.model.modules())
    patches, times = torch.randn(2, 144, 64), torch.tensor([0.0, 0.5])
    ours = bundle.video_tokenizer.tokenize(patches, times).frames
    theirs = cli.model.video_tokenizer.tokenize(patches, times).frames
    assert [f.n_tokens for f in ours] == [f.n_tokens for f in theirs] and ours[0].n_tokens == 4
    torch.testing.assert_close(ours[0].tokens, theirs[0].tokens)
    assert which.startswith("copy") == (bundle.model.copy_head is not None)
    assert (which == "readout") == (bundle.model.readout is not None)
    if which == "readout":  # trained (its output weights leave zero) and rebuilt with its heads
        assert bundle.model.readout.heads == 2 and float(bundle.model.readout.out.weight.abs().max()) > 0
    if which.startswith("copy"):  # the copy targets come back from the bundle: typing "A." points at saying "A"
        mode = "mix" if which == "copy_mix" else "add"
        assert bundle.model.copy_head.mode == cli.model.model.copy_head.mode == mode
        targets, ids = bundle.model.copy_head.targets, bundle.text_tokenizer.encode_text("A. A")
        assert torch.equal(targets, cli.model.model.copy_head.targets) and targets[ids[0]] == targets[ids[1]]
    inputs = random_inputs(bundle.model)
    with torch.no_grad():
        torch.testing.assert_close(bundle.model(*inputs).logits, cli.model.model.eval()(*inputs).logits)


def test_bundle_streams_within_the_trained_positions(tiny_bundle):
    """The bundle's streaming cache keeps every position inside the training window (sink + window + 1 steps)."""
    from mmduplex.inference.session import DuplexSession
    from mmduplex.lm.bundle import read_bundle_config

    config = read_bundle_config(tiny_bundle)
    streaming = config["streaming"]
    trained_steps = round(10.0 * config["step_hz"])  # duplex/tiny trains on 10 s windows
    assert streaming["sink"] + streaming["window"] + 1 == trained_steps
    session = DuplexSession.from_bundle(tiny_bundle)
    assert session.cache.max_length == trained_steps - 1
