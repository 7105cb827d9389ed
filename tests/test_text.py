"""Text tokenizer: word-level and Hugging Face (subword) tokenizers with PAD / EPAD, saving and loading."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from mmduplex.errors import CheckpointError, InputError
from mmduplex.lm.text import (
    EPAD_TOKEN,
    PAD_TOKEN,
    TextTokenizer,
    build_word_tokenizer,
    load_text_tokenizer,
)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A local Hugging Face tokenizer folder (byte-level BPE trained here, no download)."""
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(["the red square enters the blue circle leaves quickly"] * 20, trainer)
    folder = tmp_path_factory.mktemp("hf_tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>").save_pretrained(folder)
    return folder


def test_word_tokenizer_ids_and_specials():
    tok = build_word_tokenizer(["red", "square", "enters"])
    assert tok.vocab_size == 6  # UNK, 3 words, PAD, EPAD
    assert (tok.pad_id, tok.epad_id) == (4, 5)
    assert tok.encode_word("square") == [2]
    assert tok.encode_word("purple") == [0]  # unknown word -> UNK
    assert tok.decode([1, tok.pad_id, 2, tok.epad_id, 3]) == "red square enters"
    assert all(tok.is_word_start(i) for i in range(tok.vocab_size))
    with pytest.raises(InputError):
        tok.encode_word("red square")
    with pytest.raises(InputError):
        build_word_tokenizer(["red", "red"])


def test_save_load_round_trip(tmp_path):
    tok = build_word_tokenizer(["red", "square"], source="test")
    tok.save(tmp_path / "tok")
    loaded = load_text_tokenizer(str(tmp_path / "tok"))
    assert (loaded.pad_id, loaded.epad_id, loaded.vocab_size, loaded.word_level) == (tok.pad_id, tok.epad_id, 5, True)
    assert loaded.encode_word("square") == tok.encode_word("square")
    text, settings = tok.to_json()
    assert TextTokenizer.from_json(text, settings).decode([1, 2]) == "red square"
    assert not list(tmp_path.glob("tok/*.pkl"))  # plain JSON only
    json.loads((tmp_path / "tok" / "tokenizer.json").read_text())


def test_load_rejects_bad_folders(tmp_path):
    with pytest.raises(CheckpointError, match="settings file missing"):
        TextTokenizer.load(tmp_path)
    (tmp_path / "text_tokenizer.json").write_text('{"kind": "something-else"}')
    with pytest.raises(CheckpointError, match="expected kind"):
        TextTokenizer.load(tmp_path)


def test_synthetic_vocabulary():
    from mmduplex.data.synthetic import vocabulary

    tok = load_text_tokenizer("synthetic")
    assert tok.vocab_size == len(vocabulary()) + 3
    assert tok.decode([tok.encode_word(w)[0] for w in vocabulary()]) == " ".join(vocabulary())


def test_hf_subword_tokenizer(hf_folder):
    tok = load_text_tokenizer(str(hf_folder))
    assert not tok.word_level
    assert tok.tokenizer.token_to_id(PAD_TOKEN) == tok.pad_id and tok.tokenizer.token_to_id(EPAD_TOKEN) == tok.epad_id
    pieces = tok.encode_word("squarely")  # an unseen word: several pieces, the first with the leading space
    assert len(pieces) >= 2
    assert tok.is_word_start(pieces[0]) and not any(tok.is_word_start(p) for p in pieces[1:])
    assert tok.tokenizer.id_to_token(tok.encode_word("square")[0]) == "Ġsquare"
    ids = tok.encode_word("red") + [tok.pad_id] + pieces + [tok.epad_id]
    assert tok.decode(ids) == "red squarely"
