"""LiveSports-3K CC (LiveCC's live-commentary benchmark): the ``mmduplex eval livesports`` task.

Two ways to get the commentary of each event:

- **predictions** (``--predictions FILE``): a LiveCC prediction JSONL (``{"video_id", "event_id", "begin", "end",
  "pred"}`` per line), e.g. one LiveCC's repository publishes under ``evaluation/livesports3kcc/``;
- **model** (``--checkpoint BUNDLE``): each event's clip ``[begin, end]`` of ``videos/<video>`` is streamed through a
  :class:`~mmduplex.inference.session.DuplexSession` at the bundle's fps. The context -- the event title and the end of
  the commentary said before the event (``preasr_text``) -- is typed on the user stream first (the session steps until
  it has gone out, without video), then the clip's frames stream and the session is flushed at the clip's end. The
  words the model says during the clip are the prediction, written in LiveCC's JSONL form so LiveCC's own judge
  runs on it unchanged.

Scoring is offline, against the human commentary ``event_asr_text``, with the project's commentary metrics
(:class:`mmduplex.eval.commentary.TranscriptTally`: ROUGE-L F1, mean over events, and corpus BLEU-4; texts lower-cased
to word tokens), over the events that have a reference and a prediction. Events without a reference (the withheld test
ASR of the CSV release) are counted, not scored.

The official score is optional (``--judge-url``): an LLM judge's A/B preference against a baseline prediction file
the user gives (LiveCC's is GPT-4o's captions), asked in both orders, as a win rate
(:mod:`mmduplex.eval.livesports_judge`). The judgments are written in LiveCC's form (``{"video_event_id", "ab_winner",
"ba_winner"}`` per line).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mmduplex.errors import CheckpointError, InputError, VideoError
from mmduplex.eval.base import EvalTask, markdown_table
from mmduplex.eval.livesports_data import VIDEO_DIR, Event, Prediction, load_events, load_predictions, write_predictions
from mmduplex.fileio import write_text_atomic

if TYPE_CHECKING:
    import torch
    from jsonargparse import ArgumentParser

    from mmduplex.inference.session import DuplexSession

log = logging.getLogger(__name__)

CONTEXTS = ("both", "title", "preasr", "none")
_MODEL_ONLY = ("predictions_out", "limit", "context_words", "temperature", "pad_bias")


def context_text(event: Event, context: str, context_words: int | None) -> str:
    """What is typed on the user stream before the clip: title and/or the last ``context_words`` words said before."""
    parts = []
    if context in ("both", "title") and event.title:
        parts.append(event.title)
    if context in ("both", "preasr") and event.preasr:
        words = event.preasr.split()
        parts.append(" ".join(words[-context_words:] if context_words else words))
    return " ".join(parts)


def commentate(session: DuplexSession, frames: torch.Tensor, times: Sequence[float], end_s: float, context: str) -> str:
    """Stream one clip (``frames`` [T, H, W, 3] uint8 at clip times ``times``, ending at ``end_s``) after typing
    ``context``; return the words said during the clip, subword pieces joined."""
    from mmduplex.inference.loop import feed

    session.reset()
    if context.split():
        feed(session, context)  # the context goes out before the clip: its replies are not commentary
    offset = session.time
    stream = ((offset + float(t), frame) for t, frame in zip(times, frames, strict=True))
    said = [out for out in session.run(stream, end_s=offset + end_s) if out.word is not None]  # the streaming loop
    # a piece that does not start a word is glued to the previous one
    return "".join(out.word if i and not out.word_start else " " + out.word.strip() for i, out in enumerate(said))[1:]


def score(events: Sequence[Event], predictions: Mapping[str, Prediction]) -> dict[str, Any]:
    """ROUGE-L / BLEU of the predictions against ``event_asr_text``, with the counts of what was (not) scored."""
    from mmduplex.eval.commentary import TranscriptTally, tokens

    tally = TranscriptTally()
    with_reference = [e for e in events if e.asr]
    for event in with_reference:
        if event.key in predictions:
            tally.window_preds.append(" ".join(tokens(predictions[event.key].pred)))
            tally.window_refs.append(" ".join(tokens(event.asr)))
    keys = {e.key for e in events}
    metrics = tally.metrics() if tally.window_preds else {"rougeL": None, "bleu": None}
    scored = len(tally.window_preds)
    return {
        "rougeL": metrics["rougeL"],
        "bleu": metrics["bleu"],
        "scored": scored,
        "events": len(events),
        "with_reference": len(with_reference),
        "missing_predictions": sum(e.key not in predictions for e in with_reference),
        "predictions_not_in_data": sum(k not in keys for k in predictions),
        "pred_words_mean": sum(len(p.split()) for p in tally.window_preds) / scored if scored else None,
        "ref_words_mean": sum(len(r.split()) for r in tally.window_refs) / scored if scored else None,
    }


class LiveSportsEval(EvalTask):
    """LiveSports-3K CC: commentary of each event scored against the human ASR (see the module docstring).

    Args:
        data_root: folder with ``LiveSports-3K-CC.json`` (or the CSV files) and ``videos/``.
        predictions: a LiveCC prediction JSONL to score (exclusive with ``checkpoint``).
        checkpoint: an inference bundle to stream the clips through (exclusive with ``predictions``).
        predictions_out: model mode: where the predictions go (default ``<out stem>.predictions.jsonl``).
        limit: model mode: only the first ``limit`` events (``None``: all).
        context: what is typed before each clip: ``both`` (title, then previous commentary), ``title``, ``preasr``
            or ``none``.
        context_words: keep only the last ``context_words`` words of the previous commentary (``None``: all).
        temperature: model mode sampling temperature (0: greedy).
        pad_bias: model mode PAD-logit bias (> 0: quieter).
        judge: optional judge settings: ``url``, ``model``, ``api_key_env``, ``baseline``, ``out``, ``timeout_s``,
            ``retries``, ``workers``.
    """

    name = "livesports"
    defaults = {
        "data_root": None,
        "predictions": None,
        "checkpoint": None,
        "predictions_out": None,
        "limit": None,
        "context": "both",
        "context_words": None,
        "temperature": None,
        "pad_bias": None,
        "judge_url": None,
        "judge_model": None,
        "judge_api_key_env": "OPENAI_API_KEY",
        "baseline_predictions": None,
        "judge_out": None,
        "judge_timeout": 60.0,
        "judge_retries": 3,
        "judge_workers": 1,
    }
    required = ("data_root",)

    def __init__(
        self,
        data_root: str | os.PathLike,
        predictions: str | os.PathLike | None = None,
        checkpoint: str | os.PathLike | None = None,
        predictions_out: str | os.PathLike | None = None,
        limit: int | None = None,
        context: str = "both",
        context_words: int | None = None,
        temperature: float = 0.0,
        pad_bias: float = 0.0,
        judge: Mapping[str, Any] | None = None,
    ) -> None:
        if (predictions is None) == (checkpoint is None):
            raise InputError("--predictions", "give exactly one of --predictions or --checkpoint")
        if context not in CONTEXTS:
            raise InputError("--context", f"must be one of {CONTEXTS}, got {context!r}")
        for flag, value in (("--limit", limit), ("--context-words", context_words)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InputError(flag, f"must be a positive integer, got {value!r}")
        if judge is not None and not (judge.get("model") and judge.get("baseline")):
            raise InputError("--judge-url", "needs --judge-model and --baseline-predictions")
        self.data_root = Path(data_root)
        self.predictions = None if predictions is None else Path(predictions)
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.predictions_out = None if predictions_out is None else Path(predictions_out)
        self.limit, self.context, self.context_words = limit, context, context_words
        self.temperature, self.pad_bias = float(temperature), float(pad_bias)
        self.judge = dict(judge) if judge is not None else None
        self._generated: list[Prediction] | None = None
        self._judgments: str | None = None  # the judgments JSONL of the last run

    @property
    def settings(self) -> dict[str, Any]:
        return {
            "mode": "model" if self.checkpoint is not None else "predictions",
            "data_root": str(self.data_root),
            "predictions": None if self.predictions is None else str(self.predictions),
            "checkpoint": None if self.checkpoint is None else str(self.checkpoint),
            "limit": self.limit,
            "context": self.context,
            "context_words": self.context_words,
            "temperature": self.temperature,
            "pad_bias": self.pad_bias,
            "metrics": "ROUGE-L F1 (mean over events) and corpus BLEU-4 (torchmetrics) on lower-cased word tokens, "
            "against event_asr_text",
            "judge": None if self.judge is None else {k: v for k, v in self.judge.items() if k != "api_key"},
        }

    def _generate(self, events: Sequence[Event]) -> tuple[dict[str, Prediction], dict[str, Any]]:
        """Model mode: stream every event's clip through the bundle; returns the predictions and run facts."""
        from mmduplex.inference.commentary import frame_size
        from mmduplex.inference.session import DuplexSession
        from mmduplex.io.video import read_video

        session = DuplexSession.from_bundle(self.checkpoint, temperature=self.temperature, pad_bias=self.pad_bias)
        if session.fps is None:
            raise CheckpointError(self.checkpoint, "the bundle records no video fps")
        size = frame_size(session.encoder)
        chosen = list(events[: self.limit] if self.limit else events)
        missing = sorted({e.video for e in chosen if not (self.data_root / VIDEO_DIR / e.video).is_file()})
        if chosen and len(missing) == len({e.video for e in chosen}):
            raise InputError(self.data_root / VIDEO_DIR, f"none of the events' videos is there (e.g. {missing[0]})")
        if missing:
            log.warning("livesports: %d videos missing, their events are skipped (e.g. %s)", len(missing), missing[0])
        predictions: dict[str, Prediction] = {}
        unreadable: list[str] = []
        for event in (e for e in chosen if e.video not in missing):
            try:  # one broken download must not end a run of 1,702 events: it is counted and named
                clip = read_video(self.data_root / VIDEO_DIR / event.video, session.fps, size, event.begin, event.end)
            except VideoError as exc:
                log.warning("livesports: event %s skipped: %s", event.key, exc)
                unreadable.append(event.key)
                continue
            times = (clip.timestamps - event.begin).tolist()
            text = commentate(session, clip.frames, times, event.end - event.begin, self._context(event))
            predictions[event.key] = Prediction(event.video_id, event.event_id, event.begin, event.end, text)
            if len(predictions) % 50 == 0:
                log.info("livesports: %d events commentated", len(predictions))
        if unreadable and not predictions:
            raise VideoError(self.data_root / VIDEO_DIR, f"no event clip could be read (first: {unreadable[0]})")
        facts = {
            "events_streamed": len(predictions),
            "missing_videos": len(missing),
            "unreadable_events": unreadable,
            "fps": session.fps,
        }
        return predictions, facts

    def _context(self, event: Event) -> str:
        return context_text(event, self.context, self.context_words)

    def run(self) -> dict[str, Any]:
        events, files = load_events(self.data_root)
        settings = {**self.settings, "event_files": [f.name for f in files]}
        if self.checkpoint is None:
            predictions = load_predictions(self.predictions)
        else:
            predictions, facts = self._generate(events)
            settings.update(facts)
            self._generated = list(predictions.values())
            if self.predictions_out is not None:
                write_predictions(self._generated, self.predictions_out)
                settings["predictions"] = str(self.predictions_out)
        results: dict[str, Any] = {"overall": score(events, predictions)}
        if self.judge is not None:
            results["judge"] = self._judge(events, predictions)
        results["settings"] = settings
        log.info("livesports: %d events scored, ROUGE-L %s", results["overall"]["scored"], results["overall"]["rougeL"])
        return results

    def _judge(self, events: Sequence[Event], predictions: Mapping[str, Prediction]) -> dict[str, Any]:
        from mmduplex.eval.livesports_judge import JudgeClient, judge_all, win_rate

        judge = self.judge
        assert judge is not None
        baseline = load_predictions(judge["baseline"])
        client = JudgeClient(
            judge["url"], judge["model"], os.environ.get(judge["api_key_env"]), judge["timeout_s"], judge["retries"]
        )
        model_id = self.checkpoint.name if self.checkpoint is not None else Path(self.predictions).stem
        baseline_id = Path(judge["baseline"]).stem
        judgments = judge_all(
            client,
            {k: p.pred for k, p in predictions.items()},
            {k: p.pred for k, p in baseline.items()},
            {e.key: e.asr for e in events if e.asr},
            judge["workers"],
        )
        names = {"model": model_id, "baseline": baseline_id, "tie": "tie"}
        rows = [{"video_event_id": j.key, "ab_winner": names[j.ab], "ba_winner": names[j.ba]} for j in judgments]
        self._judgments = "".join(json.dumps(row) + "\n" for row in rows)
        if judge.get("out"):
            write_text_atomic(judge["out"], self._judgments)
        return {**win_rate(judgments), "model": model_id, "baseline": baseline_id, "judgments": judge.get("out")}

    def write(self, results: Mapping[str, Any], out: str | os.PathLike) -> tuple[Path, Path]:
        """Write the results, plus what has no path of its own beside ``out``: ``<out stem>.predictions.jsonl``
        (model mode) and ``<out stem>.judgments.jsonl`` (judge)."""
        results = {**results, "settings": dict(results["settings"])}
        if self._generated is not None and self.predictions_out is None:
            path = _beside(out, ".predictions.jsonl")
            write_predictions(self._generated, path)
            results["settings"]["predictions"] = str(path)
        if self._judgments is not None and "judge" in results and not results["judge"]["judgments"]:
            path = _beside(out, ".judgments.jsonl")
            write_text_atomic(path, self._judgments)
            results["judge"] = {**results["judge"], "judgments": str(path)}
        return super().write(results, out)

    def markdown(self, results: Mapping[str, Any]) -> str:
        o = results["overall"]
        parts = [
            "# LiveSports-3K CC\n",
            f"mode: {results['settings']['mode']}; scored {o['scored']} of {o['with_reference']} events with a "
            f"reference ({o['events']} events; {o['missing_predictions']} without a prediction)\n",
            markdown_table(
                ["ROUGE-L", "BLEU-4", "events", "words / event (pred)", "words / event (ASR)"],
                [[o["rougeL"], o["bleu"], o["scored"], o["pred_words_mean"], o["ref_words_mean"]]],
            ),
        ]
        if "judge" in results:
            j = results["judge"]
            columns = ["win_rate", "wins", "losses", "ties", "events"]
            table = markdown_table(["win rate %", *columns[1:]], [[j[k] for k in columns]])
            parts.append(f"\n## Judge: {j['model']} vs {j['baseline']} (both orders)\n\n" + table)
        return "\n".join(parts)

    @classmethod
    def add_arguments(cls, parser: ArgumentParser) -> None:
        add = parser.add_argument
        add("--data-root", type=str | None, metavar="DIR", help="LiveSports-3K-CC.json (or the CSV files) and videos/")
        add("--predictions", type=str | None, metavar="FILE", help="LiveCC prediction JSONL to score (or --checkpoint)")
        add("--checkpoint", type=str | None, metavar="BUNDLE", help="inference bundle: stream each event's clip")
        add("--predictions-out", type=str | None, metavar="FILE", help="model mode (<out stem>.predictions.jsonl)")
        add("--limit", type=int | None, metavar="N", help="model mode: only the first N events (default: all)")
        add("--context", type=Literal[CONTEXTS], help="typed before each clip: title and/or preasr_text")
        add("--context-words", type=int | None, metavar="N", help="keep the last N words of preasr_text (default: all)")
        add("--temperature", type=float | None, metavar="T", help="model mode: sampling temperature (0, greedy)")
        add("--pad-bias", type=float | None, metavar="B", help="model mode: PAD-logit bias, > 0 quieter (0)")
        add("--judge-url", type=str | None, metavar="URL", help="the judge's OpenAI-compatible chat endpoint")
        add("--judge-model", type=str | None, metavar="NAME", help="judge model name (LiveCC: gpt-4o-2024-08-06)")
        add("--judge-api-key-env", type=str, metavar="VAR", help="environment variable holding the judge's API key")
        add("--baseline-predictions", type=str | None, metavar="FILE", help="the judge's baseline (LiveCC: GPT-4o's)")
        add("--judge-out", type=str | None, metavar="FILE", help="judgments JSONL (default <out stem>.judgments.jsonl)")
        add("--judge-timeout", type=float, metavar="S", help="seconds per judge request")
        add("--judge-retries", type=int, metavar="N", help="retries on network errors, 429, 5xx")
        add("--judge-workers", type=int, metavar="N", help="judge requests in flight")

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> LiveSportsEval:
        if settings["checkpoint"] is None:
            if settings["predictions"] is None:
                raise InputError("--predictions", "required for 'eval livesports' unless --checkpoint is given")
            given = [k for k in _MODEL_ONLY if settings[k] not in (None, cls.defaults[k])]
            if given:  # a shared recipe may hold them: not an error
                log.warning("livesports: %s only apply with --checkpoint; ignored", ", ".join(given))
        judge = None
        if settings["judge_url"] is not None:
            judge = {
                "url": settings["judge_url"],
                "model": settings["judge_model"],
                "api_key_env": settings["judge_api_key_env"],
                "baseline": settings["baseline_predictions"],
                "out": settings["judge_out"],
                "timeout_s": settings["judge_timeout"],
                "retries": settings["judge_retries"],
                "workers": settings["judge_workers"],
            }
        same = ("data_root", "predictions", "checkpoint", "predictions_out", "limit", "context", "context_words")
        return cls(
            **{key: settings[key] for key in same},
            temperature=settings["temperature"] or 0.0,
            pad_bias=settings["pad_bias"] or 0.0,
            judge=judge,
        )


def _beside(out: str | os.PathLike, suffix: str) -> Path:
    return Path(out).with_name(Path(out).stem + suffix)
