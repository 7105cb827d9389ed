"""Checkpoints and bundles of frozen-LM recipes hold the trained parameters and the LM's identity, not the LM: loading
rebuilds it from its source and refuses other weights under the same name."""

from __future__ import annotations

import pytest
import torch
from conftest import duplex_fit_args, one_torch_thread
from safetensors.torch import load_file

from mmduplex.errors import CheckpointError
from mmduplex.lm.bundle import export_bundle, frozen_keys, load_bundle, read_checkpoint
from mmduplex.lm.text import load_text_tokenizer
from mmduplex.tokenizer.bflow import BFlowConfig, BFlowTokenizer
from mmduplex.train.duplex_module import DuplexModule
from mmduplex.train.lightning_cli import run_cli


def save_tiny_lm(folder, seed: int) -> None:
    """A tiny random Llama saved as a pretrained folder (the frozen LM's source), vocabulary of the synthetic set."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=load_text_tokenizer("synthetic").vocab_size,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(folder)  # fmt: skip


def logits(model, seed: int = 1) -> torch.Tensor:
    """The duplex LM's logits on a fixed random batch (eval mode)."""
    generator = torch.Generator().manual_seed(seed)
    text = torch.randint(0, 40, (2, 12), generator=generator)
    slots = torch.randn(2, 12, 8, model.token_dim, generator=generator)
    mask = torch.rand(2, 12, 8, generator=generator) > 0.5
    user = torch.randint(0, 40, (2, 12, model.user_slots_per_step), generator=generator)
    with torch.no_grad():
        return model.eval()(text, slots, mask, user).logits


@pytest.mark.parametrize("finetune", ["projector", "lora"])
def test_frozen_lm_is_left_out_and_rebuilt_from_its_identity(duplex_data, tmp_path, finetune):
    lm = tmp_path / "tiny-lm"
    save_tiny_lm(lm, seed=0)
    extra = [f"--model.init_args.backbone={lm}", f"--model.init_args.finetune={finetune}", "--trainer.max_steps=2",
             "--trainer.logger=false", "--trainer.limit_val_batches=0", "--data.init_args.window_s=4.0"]  # fmt: skip
    if finetune == "lora":
        extra += ["--model.init_args.lora.r=2", "--model.init_args.lora.alpha=4"]
    with one_torch_thread():
        cli = run_cli(duplex_fit_args(duplex_data, tmp_path / "run", *extra))
    trained = cli.model
    checkpoint = next((tmp_path / "run").rglob("last.ckpt"))
    ckpt = read_checkpoint(checkpoint)

    backbone = [k for k in ckpt["state_dict"] if k.startswith("model.backbone.")]
    assert all("lora_" in k for k in backbone) and bool(backbone) == (finetune == "lora")
    frozen = ckpt["duplex_config"]["frozen_backbone"]
    lm_keys = [k for k in trained.state_dict() if k.startswith("model.backbone.") and "lora_" not in k]
    assert frozen["source"] == str(lm) and frozen["keys"] == len(lm_keys) and len(frozen["sha256"]) == 64
    assert {k for k in trained.state_dict() if not k.startswith("model.backbone.")} <= set(ckpt["state_dict"])
    frozen_state = {f"model.{k}" for k in frozen_keys(trained.model)}  # the LM's tensors (tied ones under each name)
    assert set(ckpt["state_dict"]) == set(trained.state_dict()) - frozen_state and len(frozen_state) == len(lm_keys)

    # the checkpoint loads (Lightning's path): the LM rebuilt from its folder, the trained parameters restored
    tokenizer = BFlowTokenizer(BFlowConfig(dim=64, grid=(12, 12), num_key_tokens=8, max_flow_tokens=16))
    loaded = DuplexModule.load_from_checkpoint(checkpoint, video_tokenizer=tokenizer)
    want = trained.state_dict()
    assert loaded.state_dict().keys() == want.keys()
    assert all(torch.equal(v, want[k]) for k, v in loaded.state_dict().items())

    # the bundle holds the trained parameters only and loads into the same model
    bundle = export_bundle(checkpoint, tmp_path / "bundle")
    assert not any(k.startswith("backbone.") and "lora_" not in k for k in load_file(bundle / "model.safetensors"))
    torch.testing.assert_close(logits(load_bundle(bundle).model), logits(trained.model), rtol=1e-5, atol=1e-5)

    # other weights under the same name are refused, by the checkpoint and by the bundle
    save_tiny_lm(lm, seed=1)
    with pytest.raises(CheckpointError, match="frozen LM"):
        DuplexModule.load_from_checkpoint(checkpoint, video_tokenizer=tokenizer)
    with pytest.raises(CheckpointError, match="other weights"):
        load_bundle(bundle)


def test_an_lm_trained_in_full_or_built_from_a_config_is_saved_whole(tiny_duplex_run):
    """The tiny recipe (a config-built LM, ``finetune: full``): every backbone weight is in the checkpoint."""
    ckpt = read_checkpoint(tiny_duplex_run["checkpoint"])
    assert "frozen_backbone" not in ckpt["duplex_config"]
    module = tiny_duplex_run["module"]
    assert {k for k in module.state_dict() if k.startswith("model.backbone.")} <= set(ckpt["state_dict"])
