"""The text tokenizer of the duplex model: a word-level or subword tokenizer plus the PAD / EPAD stream tokens.

The text stream has one token per time step. Most steps carry ``PAD`` ("nothing new to say"); ``EPAD`` marks the
step right before a word starts (Moshi's end-of-padding), so the model announces that it is about to speak. Both
are added to the wrapped tokenizer as special tokens whose spelling cannot occur in ordinary text.

Two kinds of tokenizer are wrapped, both as a ``tokenizers.Tokenizer`` (saved and loaded as plain JSON, never
pickled):

- a word-level vocabulary built offline (:func:`build_word_tokenizer`), for small LMs trained from scratch
  (the synthetic commentary set: 12 world words, then the question words: 62 in all);
- the fast tokenizer of a Hugging Face model (:meth:`TextTokenizer.from_pretrained`: a hub id, a local folder or a
  registry name), whose words are encoded with the leading-space convention (``" word"``), as they appear inside
  running text.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers

from mmduplex.errors import CheckpointError, InputError
from mmduplex.fileio import read_json, write_json_atomic, write_text_atomic

PAD_TOKEN = "<|mmd_pad|>"
EPAD_TOKEN = "<|mmd_epad|>"
UNK_TOKEN = "<|mmd_unk|>"
TOKENIZER_FILE = "tokenizer.json"
SETTINGS_FILE = "text_tokenizer.json"
SETTINGS_KIND = "mmduplex-text-tokenizer"
SYNTHETIC = "synthetic"
"""Tokenizer spec naming the word-level vocabulary of the synthetic commentary set."""
_WORD_START_MARKS = ("Ġ", "▁", " ")  # byte-level BPE, SentencePiece, plain


class TextTokenizer:
    """A ``tokenizers.Tokenizer`` with the stream tokens ``PAD`` and ``EPAD``.

    Args:
        tokenizer: the wrapped tokenizer; ``PAD_TOKEN`` / ``EPAD_TOKEN`` are added as special tokens if missing.
        word_level: ``True`` for a word-level vocabulary (one id per word), ``False`` for a subword tokenizer.
        source: where the tokenizer came from (a hub id, a folder, ``"synthetic"``), kept for the bundle config.
    """

    def __init__(self, tokenizer: Tokenizer, word_level: bool, source: str = "") -> None:
        self.tokenizer = tokenizer
        self.word_level = bool(word_level)
        self.source = source
        missing = [tok for tok in (PAD_TOKEN, EPAD_TOKEN) if tokenizer.token_to_id(tok) is None]
        if missing:
            tokenizer.add_special_tokens(missing)
        self.pad_id = int(tokenizer.token_to_id(PAD_TOKEN))
        self.epad_id = int(tokenizer.token_to_id(EPAD_TOKEN))
        self.vocab_size = max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1
        self._auto_prefix = self._adds_word_prefix()
        self._encode_cached = lru_cache(maxsize=65536)(self._encode_word)

    @classmethod
    def from_pretrained(cls, name_or_path: str) -> TextTokenizer:
        """The fast tokenizer of a Hugging Face model (hub id, local folder or registry name) plus PAD / EPAD.

        A hub id means the hub's tokenizer; a registry name (``smollm2-135m-instruct-q4_1``) its prepared offline copy.

        Raises:
            CheckpointError: the tokenizer cannot be loaded or has no fast (``tokenizers``) backend.
        """
        from transformers import AutoTokenizer

        from mmduplex.weights import offline_copies, resolve_pretrained

        try:
            hf = AutoTokenizer.from_pretrained(resolve_pretrained(name_or_path), use_fast=True)
        except (OSError, ValueError) as exc:
            copies = offline_copies(str(name_or_path))
            hint = f"; its offline copy is {copies[0]}" if copies else ""
            raise CheckpointError(name_or_path, f"cannot load a Hugging Face tokenizer ({exc}){hint}") from exc
        backend = getattr(hf, "backend_tokenizer", None)
        if not isinstance(backend, Tokenizer):
            raise CheckpointError(name_or_path, "the tokenizer has no fast `tokenizers` backend (tokenizer.json)")
        backend = Tokenizer.from_str(backend.to_str())  # a private copy: adding PAD/EPAD must not touch `hf`
        backend.no_padding()
        backend.no_truncation()
        return cls(backend, word_level=False, source=str(name_or_path))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> TextTokenizer:
        """Load a tokenizer written by :meth:`save` (plain JSON files).

        Raises:
            CheckpointError: the folder or one of its files is missing or malformed.
        """
        directory = Path(directory)
        settings_path = directory / SETTINGS_FILE
        if not settings_path.is_file():
            raise CheckpointError(settings_path, "not a saved text tokenizer (settings file missing)")
        settings = read_json(settings_path, CheckpointError)
        if not isinstance(settings, dict) or settings.get("kind") != SETTINGS_KIND:
            raise CheckpointError(settings_path, f"expected kind {SETTINGS_KIND!r}, got {settings!r:.80}")
        try:
            tokenizer = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
        except Exception as exc:  # tokenizers raises a bare Exception on a missing or malformed file
            raise CheckpointError(directory / TOKENIZER_FILE, f"cannot load the tokenizer ({exc})") from exc
        return cls.from_json(tokenizer.to_str(), settings)

    @classmethod
    def from_json(cls, tokenizer_json: str, settings: dict) -> TextTokenizer:
        """Rebuild from :meth:`to_json`'s output (how a tokenizer travels inside a Lightning checkpoint)."""
        text = cls(Tokenizer.from_str(tokenizer_json), bool(settings["word_level"]), str(settings.get("source", "")))
        if (text.pad_id, text.epad_id) != (settings["pad_id"], settings["epad_id"]):
            raise CheckpointError(
                "text tokenizer",
                f"PAD/EPAD ids {text.pad_id}/{text.epad_id} differ from the saved {settings['pad_id']}/"
                f"{settings['epad_id']}",
            )
        return text

    def settings(self) -> dict:
        """JSON settings saved beside the tokenizer file."""
        return {
            "kind": SETTINGS_KIND,
            "word_level": self.word_level,
            "source": self.source,
            "pad_id": self.pad_id,
            "epad_id": self.epad_id,
            "vocab_size": self.vocab_size,
        }

    def to_json(self) -> tuple[str, dict]:
        """``(tokenizer JSON string, settings)``: everything :meth:`from_json` needs."""
        return self.tokenizer.to_str(), self.settings()

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``tokenizer.json`` and ``text_tokenizer.json`` into ``directory`` (created if needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_text_atomic(directory / TOKENIZER_FILE, self.tokenizer.to_str())
        write_json_atomic(directory / SETTINGS_FILE, self.settings())

    def _adds_word_prefix(self) -> bool:
        """Whether the pre-tokenizer already marks a bare word as word-initial (SentencePiece ``▁word``)."""
        if self.word_level:
            return True
        ids = self.tokenizer.encode("hello", add_special_tokens=False).ids
        return bool(ids) and self.is_word_start(ids[0])

    def _encode_word(self, word: str) -> tuple[int, ...]:
        if self.word_level:
            token = self.tokenizer.token_to_id(word)
            return (int(token if token is not None else self.tokenizer.token_to_id(UNK_TOKEN)),)
        text = word if self._auto_prefix else " " + word
        return tuple(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def encode_word(self, word: str) -> list[int]:
        """The ids of one word as it appears inside running text (subwords: with its leading space).

        Raises:
            InputError: the word is empty or contains whitespace.
        """
        word = word.strip()
        if not word or any(ch.isspace() for ch in word):
            raise InputError("word", f"expected one non-empty word without spaces, got {word!r}")
        return list(self._encode_cached(word))

    def encode_text(self, text: str) -> list[int]:
        """The ids of a whitespace-separated text, word by word (what the user stream carries)."""
        return [i for word in text.split() for i in self.encode_word(word)]

    def is_word_start(self, token_id: int) -> bool:
        """Whether ``token_id`` begins a new word (always for word-level; subwords: a leading-space piece)."""
        if self.word_level:
            return True
        piece = self.tokenizer.id_to_token(int(token_id))
        return piece is not None and piece.startswith(_WORD_START_MARKS)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` with PAD / EPAD (and other special tokens) skipped."""
        ids = [int(i) for i in ids if int(i) not in (self.pad_id, self.epad_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        kind = "word-level" if self.word_level else "subword"
        return f"TextTokenizer({kind}, source={self.source!r}, vocab_size={self.vocab_size})"


def build_word_tokenizer(vocabulary: Sequence[str], source: str = "words") -> TextTokenizer:
    """A word-level tokenizer over ``vocabulary`` (ids: UNK, the words in order, then PAD, EPAD).

    Raises:
        InputError: the vocabulary is empty, has duplicates, or a word contains whitespace.
    """
    words = [str(w) for w in vocabulary]
    if not words or len(set(words)) != len(words) or any(not w or any(c.isspace() for c in w) for w in words):
        raise InputError("vocabulary", f"expected distinct non-empty words without spaces, got {words[:20]!r}")
    vocab = {UNK_TOKEN: 0, **{w: i + 1 for i, w in enumerate(words)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK_TOKEN))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens([UNK_TOKEN])
    return TextTokenizer(tokenizer, word_level=True, source=source)


def load_text_tokenizer(spec: str) -> TextTokenizer:
    """The tokenizer named by ``spec``.

    Args:
        spec: ``"synthetic"`` (the synthetic set's word vocabulary), a folder written by :meth:`TextTokenizer.save`,
            or a Hugging Face tokenizer (hub id or local folder).
    """
    if spec == SYNTHETIC:
        from mmduplex.data.synthetic import vocabulary

        return build_word_tokenizer(vocabulary(), source=SYNTHETIC)
    if (Path(spec) / SETTINGS_FILE).is_file():
        return TextTokenizer.load(spec)
    return TextTokenizer.from_pretrained(spec)
