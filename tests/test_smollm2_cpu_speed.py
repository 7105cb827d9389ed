"""What makes the frozen-LM recipes cheaper on a CPU stays exact or close: the LM head only on the steps with a target
gives the full head's loss and gradients; a session's bfloat16 LM stays close to float32 and leaves the bundle as it
is. (The costs themselves: ``benchmarks/bench_smollm2_cpu.py``.)"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_duplex_module

from mmduplex.errors import InputError
from mmduplex.inference.session import DuplexSession, model_in_dtype
from mmduplex.lm.bundle import DuplexBundle
from mmduplex.lm.model import DuplexLM, LoraSettings, LossWeights, apply_lora, build_backbone, text_loss
from mmduplex.lm.text import load_text_tokenizer
from mmduplex.tokenizer.bflow import BFlowConfig, BFlowTokenizer

TINY_LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 2, "num_key_value_heads": 1}  # fmt: skip
V, PAD, EPAD, DV, K = 12, 10, 11, 8, 3


def make_model(lm_rows: int) -> DuplexLM:
    """A tiny DuplexLM whose LM has ``lm_rows`` rows (``PAD``: PAD / EPAD right after them; ``V``: inside)."""
    torch.manual_seed(0)
    backbone = build_backbone(TINY_LLAMA, vocab_size=lm_rows, attn_implementation="sdpa").requires_grad_(False)
    model = DuplexLM(backbone, V, PAD, EPAD, DV, K)
    torch.nn.init.normal_(model.special_head.weight)  # trained-looking PAD / EPAD logits, so every column matters
    return model


def make_inputs(batch: int = 3, steps: int = 10):
    g = torch.Generator().manual_seed(1)
    text = torch.randint(0, V, (batch, steps), generator=g)
    text[:, ::3] = PAD
    text[0, 4] = EPAD
    slots = torch.randn(batch, steps, K, DV, generator=g)
    mask = torch.rand(batch, steps, K, generator=g) > 0.3
    return text, slots, mask, torch.full((batch, steps), PAD)


def loss_and_grads(model: DuplexLM, targets_only: bool) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    text, slots, mask, user = make_inputs()
    logits = model(text, slots, mask, user, targets_only=targets_only).logits
    loss, _ = text_loss(logits, text, PAD, EPAD, LossWeights(pad=0.5, epad=2.0, silence=0.3))
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), logits.detach(), grads


@pytest.mark.parametrize("lm_rows", [PAD, V], ids=["specials-after-lm-rows", "specials-inside-lm-rows"])
def test_head_at_targets_is_the_full_head_loss(lm_rows):
    model = make_model(lm_rows)
    full_loss, full_logits, full_grads = loss_and_grads(model, targets_only=False)
    loss, logits, grads = loss_and_grads(model, targets_only=True)
    assert logits.shape == (3, 9, V) and full_logits.shape == (3, 10, V)
    torch.testing.assert_close(logits, full_logits[:, :-1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(loss, full_loss, rtol=1e-6, atol=0)
    assert set(grads) == set(full_grads) and "video.mlp.0.weight" in grads and "special_head.weight" in grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, full_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_head_writes_pad_and_epad_from_their_own_head_in_both_layouts():
    for lm_rows in (PAD, V):
        model = make_model(lm_rows).eval()
        hidden = torch.randn(2, 4, model.hidden)
        with torch.no_grad():
            logits = model.head(hidden)
            lm = model.backbone.get_output_embeddings()(hidden)[..., :PAD]
            special = model.special_head(hidden)
        assert logits.dtype == torch.float32 and logits.shape == (2, 4, V)
        torch.testing.assert_close(logits[..., :PAD], lm)
        torch.testing.assert_close(logits[..., [PAD, EPAD]], special)


def test_text_loss_refuses_logits_of_another_length():
    text = torch.zeros(2, 6, dtype=torch.long)
    with pytest.raises(InputError, match="logits"):
        text_loss(torch.zeros(2, 4, V), text, PAD, EPAD, LossWeights())


def test_training_step_loss_is_the_full_head_loss():
    module = tiny_duplex_module()
    tok = module.text_tokenizer
    g = torch.Generator().manual_seed(2)
    text = torch.randint(0, tok.vocab_size, (2, 12), generator=g)
    text[:, 1::2] = tok.pad_id
    batch = {
        "text_ids": text,
        "user_ids": torch.full((2, 12), tok.pad_id),
        "video_slots": torch.randn(2, 12, 4, module.model.token_dim, generator=g),
        "video_mask": torch.rand(2, 12, 4, generator=g) > 0.3,
    }
    with pytest.warns(UserWarning, match="self.log"):  # no trainer here: Lightning only warns about the logging
        loss = module.training_step(batch, 0)
    reference, _ = text_loss(module(batch), text, tok.pad_id, tok.epad_id, module.loss_weights)
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=0)


def make_bundle() -> DuplexBundle:
    tok = load_text_tokenizer("synthetic")
    torch.manual_seed(0)
    backbone = build_backbone(TINY_LLAMA, vocab_size=tok.vocab_size, attn_implementation="sdpa")
    model = DuplexLM(backbone, tok.vocab_size, tok.pad_id, tok.epad_id, DV, K)
    video = BFlowTokenizer(BFlowConfig(dim=DV, grid=(2, 2), num_key_tokens=2))
    config = {"step_hz": 5.0, "delay_steps": 1, "slots_per_step": K, "fps": 2.0, "encoder": None}
    return DuplexBundle(model.eval(), tok, video.eval(), config)


def stream_logits(session: DuplexSession, steps: int = 20, tokens: list[int] | None = None) -> torch.Tensor:
    """``steps`` steps on a drifting feature field at 2 fps; the text input forced to ``tokens`` when given."""
    g = torch.Generator().manual_seed(3)
    base, drift = torch.randn(4, DV, generator=g), torch.randn(4, DV, generator=g)
    logits = []
    for k in range(steps):
        if k % 3 == 0:  # a frame at 2 fps per 5 Hz step, give or take
            session.push_features(k / 5.0, base + 0.2 * k * drift)
        logits.append(session.step().logits)
        if tokens is not None:
            session._text_in = tokens[k]  # the reference stream's token: both see the same inputs
    return torch.stack(logits)  # [steps, V]


def test_bfloat16_session_stays_close_and_leaves_the_bundle_in_float32():
    bundle = make_bundle()
    reference = DuplexSession(bundle, sink=2, window=8)
    ref_logits = stream_logits(reference)
    tokens = [int(row.argmax()) for row in ref_logits]
    session = DuplexSession(bundle, sink=2, window=8, torch_dtype="bfloat16")
    assert next(session.model.backbone.parameters()).dtype == torch.bfloat16
    assert next(bundle.model.backbone.parameters()).dtype == torch.float32  # the bundle's model is not converted
    assert DuplexSession(bundle, torch_dtype="bfloat16").model is session.model  # one copy per model and dtype
    logits = stream_logits(session, tokens=tokens)
    assert logits.dtype == torch.float32
    scale = ref_logits.std()
    assert (logits - ref_logits).abs().max() < 0.05 * scale, "bfloat16 logits drift beyond its rounding"
    assert (logits - ref_logits).abs().max() > 0  # it did run in bfloat16
    assert (logits.argmax(-1) == ref_logits.argmax(-1)).float().mean() >= 0.9


def test_model_in_dtype_refuses_what_is_not_a_float_dtype():
    model = make_bundle().model
    assert model_in_dtype(model, None) is model and model_in_dtype(model, "float32") is model
    for bad in ("int8", "bfloat17"):
        with pytest.raises(InputError, match="torch_dtype"):
            model_in_dtype(model, bad)


def test_lora_adapters_on_a_bfloat16_lm_are_float32_and_train_under_autocast():
    backbone = build_backbone(TINY_LLAMA, vocab_size=PAD, torch_dtype="bfloat16", attn_implementation="sdpa")
    apply_lora(backbone, LoraSettings(r=4, alpha=8.0))
    adapters = {name: p for name, p in backbone.named_parameters() if "lora_" in name}
    assert adapters and all(p.dtype == torch.float32 for p in adapters.values())
    assert next(backbone.get_input_embeddings().parameters()).dtype == torch.bfloat16  # the LM itself stays bf16
    model = DuplexLM(backbone, V, PAD, EPAD, DV, K)
    text, slots, mask, user = make_inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = text_loss(model(text, slots, mask, user, targets_only=True).logits, text, PAD, EPAD, LossWeights())
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in adapters.values())
