"""LiveSports-3K's official score: an LLM judge's A/B preference between two commentaries, as a win rate.

This follows LiveCC's ``evaluation/livesports3kcc/llm_judge.py``:

- the judge sees LiveCC's A/B prompt (:func:`ab_prompt`): two commentaries and the human commentary
  (``event_asr_text``) as reference, and is asked which one aligns better with it;
- every event is judged in both orders (the model as A, then as B), with seed 42 and temperature 0;
- a reply naming ``Commentary A`` picks A (checked first), else one naming ``Commentary B`` picks B, else a tie;
- win rate = the model's wins over both orders / (2 x events judged) x 100; ties count as not won.

The judge is any OpenAI-compatible chat-completions endpoint the user names (LiveCC used GPT-4o, version
2024-08-06, through Azure). :class:`JudgeClient` speaks to it with the standard library (``urllib``), bounded:
a timeout per request and a fixed number of retries on network errors, 429 and 5xx replies.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from mmduplex.errors import InputError

log = logging.getLogger(__name__)

SEED = 42
"""The seed LiveCC sends with every judge request."""
MODEL, BASELINE, TIE = "model", "baseline", "tie"


def ab_prompt(a: str, b: str, human: str) -> str:
    """LiveCC's judge prompt for commentary ``a`` (A) against ``b`` (B), ``human`` being the reference."""
    return (
        "You are an expert in video commentary. Your task is to review two commentaries (Commentary A and "
        "Commentary B), and select the one that better aligns with the human commentary. You should consider the "
        "criteria:\n"
        "1. Semantic Alignment: The commentary should convey the same meaning, details, and key points as the "
        "human commentary.\n"
        "If the above criteria is not enough to judge, then consider:\n"
        "2. Stylistic Consistency: The commentary should maintain a tone, word choice, and structure similar to "
        "the human commentary.\n"
        f"\n---Commentary A---\n{a}\n----------\n"
        f"\n---Commentary B---\n{b}\n----------\n"
        f"\n---Human Commentary---\n{human}\n----------\n"
        '\nYour response should be "Commentary A is better aligned with the human commentary" or "Commentary B '
        'is better aligned with the human commentary".\n'
    )


def parse_verdict(reply: str) -> str:
    """``"A"``, ``"B"`` or ``"tie"`` from the judge's reply, checked in LiveCC's order (A first)."""
    if "Commentary A" in reply:
        return "A"
    if "Commentary B" in reply:
        return "B"
    return TIE


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class JudgeClient:
    """A bounded client of an OpenAI-compatible ``chat/completions`` endpoint.

    Args:
        url: the endpoint (``.../v1/chat/completions``) or its base (``.../v1``; ``/chat/completions`` is added).
        model: the judge model name sent with each request.
        api_key: sent as ``Authorization: Bearer <key>``; ``None`` sends none (a local server).
        timeout_s: seconds one request may take.
        retries: further tries after a network error, a 429 or a 5xx reply (waiting 1, 2, 4, ... s, at most 30).

    Raises:
        InputError: a URL that is not http(s), or bad limits.
    """

    def __init__(self, url: str, model: str, api_key: str | None, timeout_s: float, retries: int) -> None:
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise InputError("--judge-url", f"expected an http(s) URL, got {url!r}")
        if not timeout_s > 0 or retries < 0:
            raise InputError("--judge-timeout", f"need timeout > 0 and retries >= 0, got {timeout_s}, {retries}")
        self.url = url if url.rstrip("/").endswith("/chat/completions") else url.rstrip("/") + "/chat/completions"
        self.model, self.api_key, self.timeout_s, self.retries = model, api_key, float(timeout_s), int(retries)
        handlers = [urllib.request.ProxyHandler({})] if _is_loopback(self.url) else []  # a local judge: no proxy
        self._opener = urllib.request.build_opener(*handlers)
        self.sleep: Callable[[float], None] = time.sleep

    def complete(self, prompt: str) -> str:
        """The judge's reply to ``prompt`` (one user message; seed 42, temperature 0).

        Raises:
            InputError: the endpoint refused the request (4xx other than 429), answered something that is not a
                chat completion, or failed ``1 + retries`` times.
        """
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}], "seed": SEED, "temperature": 0}
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, json.dumps(body).encode("utf-8"), headers, method="POST")
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.sleep(min(30.0, 2.0 ** (attempt - 1)))
            try:
                with self._opener.open(request, timeout=self.timeout_s) as response:
                    return _reply_text(json.loads(response.read().decode("utf-8")), self.url)
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode("utf-8", "replace")[:200]
                if exc.code != 429 and exc.code < 500:
                    raise InputError(self.url, f"the judge refused the request: HTTP {exc.code} {detail}") from None
                problem = f"HTTP {exc.code} {detail}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                problem = str(getattr(exc, "reason", exc))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise InputError(self.url, f"the judge's reply is not JSON ({exc})") from None
            log.warning("judge request %d/%d failed: %s", attempt + 1, self.retries + 1, problem)
        raise InputError(self.url, f"the judge failed {self.retries + 1} times; last: {problem}")


def _reply_text(reply: Any, url: str) -> str:
    try:
        text = reply["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise InputError(url, f"not a chat completion: {json.dumps(reply)[:200]}") from None
    if not isinstance(text, str):
        raise InputError(url, f"the completion's content is not text: {text!r:.80}")
    return text


@dataclass(frozen=True)
class Judgment:
    """The two verdicts on one event: who won with the model as A (``ab``) and with the model as B (``ba``)."""

    key: str
    ab: str
    ba: str


def judge_event(client: JudgeClient, key: str, model: str, baseline: str, human: str) -> Judgment:
    """Judge one event in both orders; each verdict is ``"model"``, ``"baseline"`` or ``"tie"``."""
    ab = parse_verdict(client.complete(ab_prompt(model, baseline, human)))
    ba = parse_verdict(client.complete(ab_prompt(baseline, model, human)))
    names = {"A": MODEL, "B": BASELINE, TIE: TIE}, {"A": BASELINE, "B": MODEL, TIE: TIE}
    return Judgment(key, names[0][ab], names[1][ba])


def judge_all(
    client: JudgeClient,
    model: Mapping[str, str],
    baseline: Mapping[str, str],
    human: Mapping[str, str],
    workers: int = 1,
) -> list[Judgment]:
    """Judge every event of ``human`` (key -> reference) that both ``model`` and ``baseline`` have, in key order."""
    keys = sorted(k for k in human if k in model and k in baseline)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda k: judge_event(client, k, model[k], baseline[k], human[k]), keys))


def win_rate(judgments: list[Judgment]) -> dict[str, Any]:
    """LiveCC's arithmetic: the model's wins over both orders / (2 x events) x 100 (ties are not wins)."""
    verdicts = [v for j in judgments for v in (j.ab, j.ba)]
    wins, losses = verdicts.count(MODEL), verdicts.count(BASELINE)
    return {
        "win_rate": 100.0 * wins / len(verdicts) if verdicts else None,
        "events": len(judgments),
        "wins": wins,
        "losses": losses,
        "ties": len(verdicts) - wins - losses,
    }
