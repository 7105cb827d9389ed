"""The copy head (mmduplex.lm.copy_head), both modes: its targets, streaming on the bounded cache == the teacher-forced
forward and the cache-free bounded reference, causality, the mixture against its dense formula, and that it learns the
multiple-choice letter look-up (the mixture also where the LM's logits are far apart, as a pretrained LM's are)."""

from __future__ import annotations

import pytest
import torch
from bounded_reference import bounded_reference, random_steps, stream_steps

from mmduplex.errors import InputError
from mmduplex.lm.copy_head import COPY_MODES, copy_targets
from mmduplex.lm.kvcache import SinkWindowCache
from mmduplex.lm.model import DuplexLM, build_backbone
from mmduplex.lm.text import build_word_tokenizer

TINY_LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2}  # fmt: skip
WORDS = ["A.", "B.", "C.", "D.", "A", "B", "C", "D", "red", "blue", "green", "yellow", "pink", "grey", "?", "what"]
TOKENIZER = build_word_tokenizer(WORDS)
V, PAD, EPAD = TOKENIZER.vocab_size, TOKENIZER.pad_id, TOKENIZER.epad_id
DV, K, U = 8, 2, 2


def make_model(copy_dim: int = 16, seed: int = 0, mode: str = "add") -> DuplexLM:
    torch.manual_seed(seed)
    backbone = build_backbone(TINY_LLAMA, vocab_size=V, attn_implementation="sdpa")
    model = DuplexLM(
        backbone, V, PAD, EPAD, DV, K, projector_hidden=32, user_slots_per_step=U, copy_dim=copy_dim, copy_mode=mode
    )
    if model.copy_head is not None:
        model.copy_head.set_targets(copy_targets(TOKENIZER))
        with torch.no_grad():  # an untrained gate gives a small bonus; make it large enough to show in the logits
            model.copy_head.gate.bias.fill_(2.0)
    return model.eval()


def make_inputs(batch=2, steps=12, seed=1):
    return random_steps(batch, steps, K, DV, U, V, PAD, seed, fill=0.6)


def test_targets_join_an_option_label_and_its_letter():
    targets = copy_targets(TOKENIZER)
    a_label, a, b, red, question = (TOKENIZER.encode_word(w)[0] for w in ("A.", "A", "B", "red", "?"))
    assert targets[a_label] == targets[a] == a_label and targets[b] != targets[a] and targets[red] == red
    assert targets[question] == targets[PAD] == targets[EPAD] == V  # punctuation and specials are never copied


@pytest.mark.parametrize("mode", COPY_MODES)
def test_streaming_equals_teacher_forced_and_the_bonus_needs_typed_text(mode):
    model = make_model(mode=mode)
    text, slots, mask, user = make_inputs()
    with torch.no_grad():
        full = model(text, slots, mask, user).logits  # [B, S, V]
        plain = model.head(model.backbone.get_decoder()(inputs_embeds=model.embed(text, slots, mask, user))[0])
    cache = SinkWindowCache(model, sink=2, window=text.shape[1])  # nothing is evicted
    torch.testing.assert_close(stream_steps(model, cache, text, slots, mask, user), full, rtol=1e-4, atol=1e-5)
    if mode == "mix":  # log-probabilities: they sum to 1, and the LM's own before anything is typed
        torch.testing.assert_close(full.exp().sum(-1), torch.ones(full.shape[:2]))
        plain = plain.log_softmax(-1)
    bonus = full - plain
    assert bonus[:, :2].abs().max() < 1e-5  # no typed text yet
    raise_ = bonus - bonus.amin(dim=-1, keepdim=True)  # add: the bonus; mix: over the (1 - lambda) every word gets
    assert raise_[:, 2:].max() > 0.1  # typed text: its words' logits rise
    targets = model.copy_head.targets
    typed = {int(targets[i]) for i in user[0].flatten() if i != PAD}  # the copy targets typed in the stream
    raised = {int(targets[v]) for v in (raise_[0, -1] > 1e-5).nonzero().flatten()}
    assert raised and raised <= typed  # only words typed earlier (or their label / letter twins) rise


def test_the_mixture_is_its_dense_formula():
    """``p = p_gen * ((1 - lambda) + lambda * w[target] / p_gen(class))``, written densely over the vocabulary, equals
    the head's sparse gather / scatter over the typed classes' members."""
    model = make_model(mode="mix")
    head = model.copy_head
    text, slots, mask, user = make_inputs(batch=2, steps=8)
    with torch.no_grad():
        hidden = model.backbone.get_decoder()(inputs_embeds=model.embed(text, slots, mask, user))[0]
        logits = model.head(hidden)
        memory = head.step_memory(model.embed_user(user, text.shape), user, text.shape, model._copy_tokens(user))
        mixed = head(hidden, memory, first=0, logits=logits)  # [B, S, V]
        keys, targets, word_keys = memory
        typed = targets < V  # [B, P, U]
        allowed = (torch.arange(8)[None] <= torch.arange(8)[:, None])[None] & typed.any(-1)[:, None]  # [B, T, P]
        scale = head.dim**0.5
        attn = (head.query(hidden) @ keys.transpose(1, 2) / scale).masked_fill(~allowed, -torch.inf).softmax(-1)
        words = torch.einsum("btd,bpud->btpu", head.word_query(hidden), word_keys) / scale
        within = words.masked_fill(~typed[:, None], -torch.inf).softmax(-1).nan_to_num(0.0)
        pointer = attn.nan_to_num(0.0).unsqueeze(-1) * within  # [B, T, P, U]
        w = torch.zeros(2, 8, V + 1).scatter_add_(2, targets[:, None].expand(-1, 8, -1, -1).reshape(2, 8, -1),
                                                  pointer.reshape(2, 8, -1))  # fmt: skip
        p_gen = logits.softmax(-1)  # [B, T, V]
        in_class = torch.nn.functional.one_hot(head.targets.clamp(max=V), V + 1).float()  # [V, V + 1]
        class_mass = p_gen @ in_class  # [B, T, V + 1]: p_gen of each class
        lam = torch.sigmoid(head.gate(hidden)) * allowed.any(-1, keepdim=True)  # [B, T, 1]
        ratio = (w / class_mass.clamp(min=1e-30)) @ in_class.T  # [B, T, V]: w[target(v)] / p_gen(class of v)
        expected = (p_gen * ((1 - lam) + lam * ratio)).log()
    assert typed.any() and (lam > 0).any()
    torch.testing.assert_close(mixed, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", COPY_MODES)
def test_streaming_past_the_window_points_only_at_the_steps_the_cache_keeps(mode):
    """Past the window, each step's bonus is the head over the cache-free bounded hidden states and the kept steps'
    keys (the first ``sink``, the last ``window``, itself): the copy memory is evicted with the KV cache."""
    model = make_model(mode=mode)
    sink, window, steps = 2, 4, 14
    text, slots, mask, user = make_inputs(batch=1, steps=steps)
    cache = SinkWindowCache(model, sink=sink, window=window)
    streamed = stream_steps(model, cache, text, slots, mask, user)
    assert all(v.shape[1] == sink + window for v in cache.side.values())
    with torch.no_grad():
        reference = bounded_reference(model, model.embed(text, slots, mask, user), sink, window, user)  # [S, V]
    torch.testing.assert_close(streamed[0], reference, rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # and the pointer matters there: the same reference without the user stream's keys differs
        blind = bounded_reference(model, model.embed(text, slots, mask, user), sink, window)
    assert (blind - reference).abs().max() > 0.1


@pytest.mark.parametrize("mode", COPY_MODES)
def test_causality_and_the_cache_copy(mode):
    model = make_model(mode=mode)
    text, slots, mask, user = make_inputs()
    with torch.no_grad():
        base = model(text, slots, mask, user).logits
        later = user.clone()
        later[:, 8:] = torch.randint(0, PAD, later[:, 8:].shape)
        changed = model(text, slots, mask, later).logits
    torch.testing.assert_close(changed[:, :8], base[:, :8], rtol=0, atol=1e-6)
    cache = SinkWindowCache(model, sink=2, window=4)
    stream_steps(model, cache, text[:, :6], slots[:, :6], mask[:, :6], user[:, :6])
    twin = cache.copy()  # one streamed video, two continuations: each keeps its own copy memory
    a = stream_steps(model, cache, text[:, 6:], slots[:, 6:], mask[:, 6:], user[:, 6:])
    b = stream_steps(model, twin, text[:, 6:], slots[:, 6:], mask[:, 6:], user[:, 6:])
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    cache.batch_select_indices(torch.tensor([1]))
    assert all(v.shape[0] == 1 for v in cache.side.values())
    cache.crop(-2)  # HF's crop drops the last entries: the copy memory follows
    assert cache.length == 4 and all(v.shape[1] == 4 for v in cache.side.values())


def test_a_cache_filled_without_the_copy_head_is_refused():
    plain, copying = make_model(copy_dim=0), make_model()
    text, slots, mask, user = make_inputs(batch=1, steps=3)
    cache = SinkWindowCache(plain, sink=2, window=4)
    stream_steps(plain, cache, text, slots, mask, user)
    with pytest.raises(InputError, match="copy memory holds 0 steps, the cache 3"):
        stream_steps(copying, cache, text, slots, mask, user)


def lookup_batch(batch: int, g: torch.Generator):
    """Four option lines ``X. colour`` (one a step, 2 user slots), then the model says a colour and must say its
    letter: ``text = [PAD x 4, colour, letter]``; the target is the letter after the colour."""
    colours = torch.tensor([TOKENIZER.encode_word(w)[0] for w in WORDS[8:14]])
    labels = torch.tensor([TOKENIZER.encode_word(w)[0] for w in WORDS[:4]])
    letters = torch.tensor([TOKENIZER.encode_word(w)[0] for w in WORDS[4:8]])
    options = torch.stack([colours[torch.randperm(6, generator=g)[:4]] for _ in range(batch)])  # [B, 4]
    right = torch.randint(0, 4, (batch,), generator=g)
    user = torch.full((batch, 6, U), PAD)
    user[:, :4, 0], user[:, :4, 1] = labels, options
    text = torch.full((batch, 6), PAD)
    text[:, 4], text[:, 5] = options[torch.arange(batch), right], letters[right]
    return text, torch.zeros(batch, 6, K, DV), torch.zeros(batch, 6, K, dtype=torch.bool), user


@pytest.mark.parametrize(("copy_dim", "mode", "scale"), [(0, "add", 1), (16, "add", 1), (16, "mix", 1),
                                                          (16, "add", 30), (16, "mix", 30)])  # fmt: skip
def test_the_copy_head_learns_the_letter_look_up(copy_dim, mode, scale):
    """The reply's letter after an option's name: with the copy head a tiny model learns the look-up in 150 steps on
    fresh questions; the same model without it stays near chance (1 in 4) in as many steps. With the LM's logits 30x
    (far apart, as a pretrained LM's: SmolLM2's letters) the additive bonus no longer gets there; the mixture does."""
    model = make_model(copy_dim=copy_dim, mode=mode).train()
    if copy_dim:
        with torch.no_grad():
            model.copy_head.gate.bias.zero_()  # the head's own initialisation
    head = model.head
    model.head = lambda hidden: head(hidden) * scale
    g = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        text, slots, mask, user = lookup_batch(32, g)
        logits = model(text, slots, mask, user).logits[:, 4]  # [B, V]: predicts text[5], the letter
        loss = torch.nn.functional.cross_entropy(logits, text[:, 5])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    text, slots, mask, user = lookup_batch(400, torch.Generator().manual_seed(99))
    with torch.no_grad():
        accuracy = float((model.eval()(text, slots, mask, user).logits[:, 4].argmax(-1) == text[:, 5]).float().mean())
    assert accuracy > 0.9 if copy_dim and (mode == "mix" or scale == 1) else accuracy < 0.5


@pytest.mark.parametrize("supervised", [False, True])
def test_supervision_trains_the_pointer_when_the_gate_starts_shut(supervised):
    """A mix head whose gate is nearly shut (lambda 0.05) gets little gradient to its pointer and settles on the LM's
    own guess (near chance, as SmolLM2's head did on the val split: lambda <= 0.002); supervised (the pointer on the
    word to say where it was typed, the gate on whether it was) it learns the look-up."""
    model = make_model(mode="mix").train()
    with torch.no_grad():
        model.copy_head.gate.bias.fill_(-3.0)
    g = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        text, slots, mask, user = lookup_batch(32, g)
        out = model(text, slots, mask, user, targets_only=True, copy_labels=text[:, 1:] if supervised else None)
        loss = torch.nn.functional.cross_entropy(out.logits[:, 4], text[:, 5])
        assert (out.copy_loss is not None) == supervised
        optimizer.zero_grad()
        (loss + out.copy_loss if supervised else loss).backward()
        optimizer.step()
    text, slots, mask, user = lookup_batch(400, torch.Generator().manual_seed(99))
    with torch.no_grad():
        accuracy = float((model.eval()(text, slots, mask, user).logits[:, 4].argmax(-1) == text[:, 5]).float().mean())
    assert accuracy > 0.9 if supervised else accuracy < 0.5


def test_only_a_mix_head_is_supervised():
    text, slots, mask, user = make_inputs(batch=1, steps=4)
    for model in (make_model(copy_dim=0), make_model(mode="add")):
        with pytest.raises(InputError, match="copy"):
            model(text, slots, mask, user, copy_labels=text)
