"""Where a demo model's multiple-choice answers go wrong: the content (which option the reply names) or the letter.

Usage: ``python -m mmduplex.demo.choices DEMO_DIR [--mid-stream] [--split heldout|val]``.

A multiple-choice reply names the option's words, then its letter (``red A``). For each question this counts whether
the reply names exactly one of the offered options (all of its words said), whether that is the right one (the
content: what the model saw), and whether the first letter said is the named option's (the look-up: which line
held those words). Without ``--mid-stream`` it reads the LongVideoBench-format split the demo wrote
(``DEMO_DIR/lvb/lvb_val.json`` and ``DEMO_DIR/lvb_results.responses.jsonl``: the prompt typed after the last frame);
with it, it streams the split's videos from the demo's cached features with their questions typed at their times, as
the demo's questions stage does (the same session and PAD bias), and counts the multiple-choice questions asked
while the video runs (``correct / questions`` is the report's ``qa.choice_accuracy_mid_stream``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mmduplex.errors import InputError, MMDuplexError

LETTERS = ("A", "B", "C", "D")


def count_choices(items: Iterable[tuple[Sequence[str], Sequence[str], int]]) -> dict[str, int]:
    """Counts over ``(words said, options, index of the right option)``, one per question.

    Returns:
        ``questions``; ``correct`` (the first letter said is the right one); ``letter_said``; ``names_one`` (the words
        of exactly one option said); ``names_right`` (that one is right); ``named_with_letter`` (one option named and
        a letter said); ``letter_is_named`` (that letter is the named option's).
    """
    counts = dict.fromkeys(
        ("questions", "correct", "letter_said", "names_one", "names_right", "named_with_letter", "letter_is_named"), 0
    )
    for words, options, right in items:
        said = set(words)
        letters = [w for w in words if w in LETTERS]
        named = [i for i, option in enumerate(options) if all(w in said for w in option.split())]
        counts["questions"] += 1
        counts["letter_said"] += bool(letters)
        counts["correct"] += bool(letters) and letters[0] == LETTERS[right]
        if len(named) == 1:
            counts["names_one"] += 1
            counts["names_right"] += named[0] == right
            if letters:
                counts["named_with_letter"] += 1
                counts["letter_is_named"] += letters[0] == LETTERS[named[0]]
    return counts


def lvb_items(demo_dir: Path) -> list[tuple[list[str], list[str], int]]:
    """The LongVideoBench-format split's questions and replies (the files ``mmduplex demo`` writes).

    Raises:
        InputError: a file is missing, or a reply names a question the split does not hold.
    """
    split, replies = demo_dir / "lvb" / "lvb_val.json", demo_dir / "lvb_results.responses.jsonl"
    for path in (split, replies):
        if not path.is_file():
            raise InputError(path, "missing: a `mmduplex demo --out` folder whose LongVideoBench split was asked")
    records = {r["id"]: r for r in json.loads(split.read_text(encoding="utf-8"))}
    items = []
    for reply in map(json.loads, filter(None, replies.read_text(encoding="utf-8").splitlines())):
        record = records.get(reply["id"])
        if record is None:
            raise InputError(replies, f"a reply to {reply['id']!r}, which {split.name} does not hold")
        items.append((str(reply["response"]).split(), list(record["candidates"]), int(record["correct_choice"])))
    return items


def mid_stream_items(demo_dir: Path, split: str | None = None) -> list[tuple[list[str], list[str], int]]:
    """The multiple-choice questions asked while the videos of ``split`` (default: the demo's score split) stream:
    the words said in each answer window (the demo's questions stage, re-run)."""
    from mmduplex.data.synthetic import SyntheticDataset
    from mmduplex.demo import qa
    from mmduplex.demo.stages import DemoConfig, DemoPaths
    from mmduplex.inference.session import DuplexSession
    from mmduplex.io.feature_cache import FeatureCache

    config = DemoConfig(**json.loads((demo_dir / "demo_config.json").read_text(encoding="utf-8")))
    report = json.loads((demo_dir / "report.json").read_text(encoding="utf-8"))
    paths = DemoPaths(demo_dir)
    dataset, cache = SyntheticDataset(paths.data), FeatureCache(paths.features)
    session = DuplexSession.from_bundle(paths.model_bundle("bflow"), pad_bias=report["qa"]["pad_bias"])
    items = []
    for _, _, asked in qa.ask_split(session, dataset, cache, split or config.score_split, config.tolerance_s,
                                    config.pause_steps):  # fmt: skip
        for item in asked:
            question = item.question
            if question.choices and item.fed_s is not None:
                words = [w for _, w in item.words]
                items.append((words, list(question.choices), question.choices.index(question.answer)))
    return items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("demo_dir", type=Path, help="a `mmduplex demo --out` folder")
    parser.add_argument("--mid-stream", action="store_true", help="questions asked while the videos stream")
    parser.add_argument("--split", choices=("heldout", "val", "train"), help="with --mid-stream (default: scored)")
    args = parser.parse_args(argv)
    try:
        items = mid_stream_items(args.demo_dir, args.split) if args.mid_stream else lvb_items(args.demo_dir)
    except MMDuplexError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts: dict[str, Any] = count_choices(items)
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
