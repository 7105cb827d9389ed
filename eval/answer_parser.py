"""The LongVideoBench answer parser: a model's free-text response -> an option letter, as the reference does it.

Reference behaviour (LongVideoBench authors' scorer, reproduced in lmms-eval's ``longvideobench`` task):

1. strip surrounding whitespace;
2. remove every occurrence of the phrases in :data:`ANSWER_PHRASES`, in that order (case-sensitive);
3. the answer is the **first** uppercase letter ``A``-``E`` anywhere in what is left — not necessarily a
   standalone letter, so ``"Based on the video, C"`` parses as ``B`` (the ``B`` of "Based"), and a letter beyond the
   question's options (``E`` for four options) is still the parse and is simply wrong;
4. with no such letter (the reference also names the "over 10 words" case, which only fires when there is no letter
   either) the reference draws a random option. This project is deterministic: :func:`parse_answer` returns
   ``None`` and the scorer counts the question wrong and reports how many there were (``no_letter``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ANSWER_PHRASES: tuple[str, ...] = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option is",
    "The correct option is",
    "Best answer:",
    "Best option:",
)
"""Phrases removed before looking for a letter (the reference's list and order)."""

LETTERS = "ABCDE"
"""The option letters LongVideoBench uses (4 or 5 options)."""

_LETTER = re.compile(f"[{LETTERS}]")
_LONG_RESPONSE_WORDS = 10


@dataclass(frozen=True)
class ParsedAnswer:
    """The parse of one response.

    Attributes:
        letter: the option letter, or ``None`` when the response has no ``A``-``E`` after stripping.
        reason: ``"letter"``, ``"no_letter"``, or ``"long_no_letter"`` (over 10 words and no letter: the reference's
            separate random-choice branch, reported apart for transparency; both count as wrong).
    """

    letter: str | None
    reason: str


def strip_answer_phrases(response: str) -> str:
    """Remove the reference's answer phrases (step 1-2 above) and return what is left."""
    text = response.strip()
    for phrase in ANSWER_PHRASES:
        text = text.replace(phrase, "")
    return text


def parse_response(response: str) -> ParsedAnswer:
    """Parse ``response`` exactly as the reference does, except that "no letter" is not replaced by a random one."""
    text = strip_answer_phrases(response)
    match = _LETTER.search(text)
    if match is not None:
        return ParsedAnswer(match.group(0), "letter")
    if len(text.split()) > _LONG_RESPONSE_WORDS:
        return ParsedAnswer(None, "long_no_letter")
    return ParsedAnswer(None, "no_letter")


def parse_answer(response: str) -> str | None:
    """The option letter the reference reads from ``response``, or ``None`` when there is none."""
    return parse_response(response).letter


def choice_letter(index: int) -> str:
    """``0 -> "A"``, ``1 -> "B"``, ... (the reference's ``chr(65 + correct_choice)``)."""
    return chr(ord("A") + index)
