"""The LongVideoBench answer parser reproduces the reference's behaviour, including its odd edge cases."""

from __future__ import annotations

import pytest

from mmduplex.eval.answer_parser import (
    ANSWER_PHRASES,
    choice_letter,
    parse_answer,
    parse_response,
    strip_answer_phrases,
)


@pytest.mark.parametrize(
    ("response", "letter"),
    [
        ("B", "B"),
        ("  C  ", "C"),
        ("(D)", "D"),
        ("D. A book", "D"),  # the first letter wins, not the 'A' of the option text
        ("The best answer is C", "C"),
        ("The correct answer is: E.", "E"),
        ("The answer is A", "A"),
        ("The correct option is D", "D"),
        # 'Best answer:' / 'Best option:' contain a 'B': only stripping them lets the real letter through
        ("Best answer: C", "C"),
        ("Best option: D", "D"),
        # the reference takes the first uppercase A-E anywhere: the 'B' of "Based" ...
        ("Based on the video, C", "B"),
        # ... and the 'C' of "Clearly", the 'E' of "Each": not standalone letters
        ("Clearly the answer must be A", "C"),
        ("Each option fails except B", "E"),
        ("The answer: D", "D"),
        ("option e is wrong, so it is A", "A"),
    ],
)
def test_reference_parse(response, letter):
    assert parse_answer(response) == letter


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        ("", "no_letter"),
        ("i think it is d", "no_letter"),  # lowercase letters never count
        ("The best answer is", "no_letter"),  # only the stripped phrase: nothing left
        ("I am not sure what happens in this video at that moment, sorry about it", "long_no_letter"),
    ],
)
def test_no_letter_is_none_with_reason(response, reason):
    parsed = parse_response(response)
    assert parsed.letter is None
    assert parsed.reason == reason


def test_phrases_stripped_in_reference_order():
    # "The answer is" goes before "The answer", so nothing of the phrase is left
    assert strip_answer_phrases(" The answer is B ") == " B"
    assert strip_answer_phrases("Best option: Best answer: x") == "  x"
    assert ANSWER_PHRASES[2:4] == ("The answer is", "The answer")


def test_choice_letter():
    assert [choice_letter(i) for i in range(5)] == list("ABCDE")
