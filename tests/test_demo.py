"""The reduced demo (recipes/demo/smoke.yaml) end to end through the CLI: every stage, every output, the report keys,
a clean terminal, re-running reuses the stages, the trained model beats a text-only baseline that speaks and its own
video ablation, and the pages work in a browser."""

from __future__ import annotations

import functools
import html
import http.server
import json
import re
import shutil
import subprocess
import threading
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from mmduplex.cli import main
from mmduplex.demo.run import DemoConfig
from mmduplex.errors import InputError
from mmduplex.io.outputs import read_vtt
from mmduplex.recipes import recipe_path

REPORT_KEYS = {
    "event_accuracy",
    "event_precision",
    "median_latency_s",
    "video_tokens_per_second",
    "wall_s",
    "settings",
    "baselines",
    "event_accuracy_by_objects",
    "event_accuracy_by_history",
    "talk_ratio",
    "video_ablation",
}
FIGURES = {
    "event_accuracy",
    "event_precision",
    "median_latency_s",
    "video_tokens_per_second",
    "talk_ratio",
    "event_accuracy_by_objects",
    "event_accuracy_by_history",
    "event_accuracy_by_others_moving",
    "event_accuracy_by_action",
    "rtf",
    "pad_bias",
}


def test_terminal_shows_progress_and_table_only(smoke_run):
    """No Python warnings (any category, workers included), no Lightning tips / notices / model summaries / progress
    bars, no per-video lines, no line printed twice."""
    both = smoke_run.stdout + smoke_run.stderr
    assert "Warning" not in both and "warn" not in both.lower(), both[-3000:]
    for noise in ("Tip:", "GPU available", "eval mode", "Epoch ", "Trainable params", "encoded ", "it/s", "Seed set"):
        assert noise not in both, (noise, both[-3000:])
    err = [line for line in smoke_run.stderr.splitlines() if line.strip()]
    assert err and all(line.startswith(("demo: ", "tokenizer: ", "duplex ")) for line in err), err
    assert len(set(err)) == len(err), err
    assert "| model |" in smoke_run.stdout and "main, another video's features" in smoke_run.stdout


def test_demo_writes_report_outputs_and_bundle(smoke_demo, capsys):
    report = json.loads((smoke_demo / "report.json").read_text())
    assert set(report) >= REPORT_KEYS
    assert {"text_only", "uniform_tokens"} <= set(report["baselines"])
    for figures in report["baselines"].values():
        assert set(figures) >= FIGURES
    assert report["baselines"]["text_only"]["video_tokens_per_second"] == 0.0
    assert report["video_tokens_per_second"] > 0
    heldout = json.loads((smoke_demo / "data" / "split.json").read_text())["heldout"]
    for vid in heldout:
        assert (smoke_demo / f"{vid}.vtt").read_text().startswith("WEBVTT")
        assert "<track" in (smoke_demo / f"{vid}.html").read_text()
    assert (smoke_demo / "bundle" / "config.json").is_file()
    assert report["settings"]["demo"]["num_videos"] == DemoConfig.from_yaml(recipe_path("demo/smoke")).num_videos


def test_rerun_reuses_every_stage(smoke_demo, capsys):
    before = (smoke_demo / "bundle" / "model.safetensors").stat().st_mtime_ns
    assert main(["demo", "--out", str(smoke_demo), "--config", "smoke"]) == 0
    report = json.loads((smoke_demo / "report.json").read_text())
    assert (smoke_demo / "bundle" / "model.safetensors").stat().st_mtime_ns == before
    stages = report["settings"]["stage_seconds"]
    assert stages["tokenizer"] < 5 and stages["duplex"] < 5, stages
    assert "| model |" in capsys.readouterr().out


def test_trained_model_beats_text_only(smoke_demo):
    report = json.loads((smoke_demo / "report.json").read_text())
    text_only = report["baselines"]["text_only"]
    assert report["event_accuracy"] >= text_only["event_accuracy"] + 0.1, (report["event_accuracy"], text_only)
    assert text_only["talk_ratio"] >= 0.3, text_only  # it speaks (DESIGN): its PAD bias was tuned on training videos


def test_every_model_reports_the_same_figures(smoke_demo):
    report = json.loads((smoke_demo / "report.json").read_text())
    assert set(report["event_accuracy_by_objects"]) == {"1", "2+"}
    assert set(report["event_accuracy_by_history"]) == {"0", "1+"}
    details = report["details"]["bflow"]
    assert sum(details["events_by_history"].values()) == details["events"]  # the buckets partition the events
    assert sum(details["events_by_others_moving"].values()) == details["events"]
    assert set(report["details"]["bflow"]) >= FIGURES
    for name in ("bflow", "text_only", "uniform_tokens"):
        figures = report["details"]["bflow"] if name == "bflow" else report["baselines"][name]
        assert figures["talk_ratio"] > 0, (name, figures)
        assert report["settings"]["pad_bias"][name] == figures["pad_bias"]
        search = figures["pad_bias_search"]
        assert search["videos"] > 0 and [figures["pad_bias"], round(search["talk_ratio_train"], 4)] in search["tried"]


def test_demo_reports_questions_while_watching(smoke_demo, smoke_run):
    """``qa`` (contract keys): the held-out questions' figures and the LongVideoBench split's results, which are exactly
    what ``eval longvideobench`` wrote for DIR/lvb; the terminal shows them."""
    from mmduplex.eval.longvideobench import load_annotations

    report = json.loads((smoke_demo / "report.json").read_text())
    qa = report["qa"]
    for key in ("lvb", "open_accuracy", "median_answer_latency_s", "event_accuracy_with_questions",
                "event_accuracy_without_questions"):  # fmt: skip
        assert key in qa, key
    assert qa["event_accuracy_without_questions"] == report["event_accuracy"]  # the same streams
    assert qa["open_questions"] > 0 and qa["choice_questions_mid_stream"] > 0 and qa["unfed_questions"] == 0
    questions = load_annotations(smoke_demo / "lvb" / "lvb_val.json")
    assert qa["lvb"]["n"] == len(questions) > 0
    assert qa["lvb"] == json.loads((smoke_demo / "lvb_results.json").read_text())
    assert qa["lvb"]["settings"]["frame_fps"] == report["settings"]["encoder"]["fps"]
    assert "LongVideoBench split (model mode)" in smoke_run.stdout and "open-question accuracy" in smoke_run.stdout


def test_trained_smoke_model_answers_questions_above_chance(smoke_demo):
    """On its training videos (what the reduced model could learn), the smoke model's words after an open question
    name the answer clearly more often than its commentary does in the same windows with nothing asked."""
    import torch

    from mmduplex.data.synthetic import SyntheticDataset
    from mmduplex.demo.qa import AskedQuestion, score_answers, stream_asking
    from mmduplex.demo.stream import lines_of
    from mmduplex.inference.session import DuplexSession
    from mmduplex.io.feature_cache import FeatureCache, video_key

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    dataset, cache = SyntheticDataset(smoke_demo / "data"), FeatureCache(smoke_demo / "features")
    session = DuplexSession.from_bundle(smoke_demo / "bundle")
    asked_ok, control_ok = [], []
    try:
        for vid in dataset.video_ids("train"):
            record = cache.load(video_key(dataset.video_path(vid)))
            times, patches = record.timestamps.tolist(), record.patches
            plain, _ = stream_asking(session, times, patches, [])
            outputs, asked = stream_asking(session, times, patches, dataset.questions(vid))
            score_answers(asked, lines_of(outputs, 3)[2], 3.0)
            control = [AskedQuestion(a.question, fed_s=a.fed_s) for a in asked if not a.question.choices]
            score_answers(control, lines_of(plain, 3)[2], 3.0)
            asked_ok += [a.correct for a in asked if not a.question.choices]
            control_ok += [c.correct for c in control]
    finally:
        torch.set_num_threads(threads)
    assert len(asked_ok) >= 40
    rate, floor = sum(asked_ok) / len(asked_ok), sum(control_ok) / len(control_ok)
    assert rate >= floor + 0.2, (rate, floor, len(asked_ok))  # measured 0.95 vs 0.48 (56 questions)


def test_main_model_uses_the_video(smoke_demo):
    """Streamed with another held-out video's features, the main model falls to chance: it reads the video."""
    report = json.loads((smoke_demo / "report.json").read_text())
    ablation = report["video_ablation"]["event_accuracy"]
    assert ablation <= 0.1, report["video_ablation"]
    assert report["event_accuracy"] >= ablation + 0.05, (report["event_accuracy"], report["video_ablation"])
    assert report["video_ablation"]["events"] == report["details"]["bflow"]["events"]


def test_breakdown_tool_matches_the_demo(smoke_demo):
    """``python -m mmduplex.demo.breakdown`` (cached features, the demo's PAD bias) reproduces the demo's held-out
    accuracy, and its buckets partition the events."""
    tool = _breakdown_tool()
    report = json.loads((smoke_demo / "report.json").read_text())
    rows = []
    figures = tool.breakdown(smoke_demo, smoke_demo / "bundle", events_out=rows)
    everything = figures["accuracy"]["all"]["all"]
    # one row per scored event (to compare models event by event), agreeing with the figures
    assert len(rows) == everything["events"]
    assert sum(r["hit"] for r in rows) / len(rows) == pytest.approx(everything["accuracy"], abs=1e-3)
    assert sum(r["action"] == "enters" and r["hit"] for r in rows) == round(
        figures["accuracy"]["action"]["enters"]["accuracy"] * figures["accuracy"]["action"]["enters"]["events"]
    )
    assert everything["events"] == report["details"]["bflow"]["events"]
    assert everything["accuracy"] == pytest.approx(report["event_accuracy"], abs=0.05)
    kinds = ("action", "objects", "time", "flow_at_shape", "video_on_time", "other shapes before", "turned before")
    for kind in (*kinds, "objects, another moving"):
        assert sum(g["events"] for g in figures["accuracy"][kind].values()) == everything["events"]
    by_action = report["details"]["bflow"]["event_accuracy_by_action"]
    assert set(by_action) == set(figures["accuracy"]["action"])
    # later events only: from the whole stream, and from a fresh stream cut 1 s before them
    heldout = json.loads((smoke_demo / "data" / "split.json").read_text())["heldout"]
    events = {r["video"]: r["events"] for r in map(json.loads, (smoke_demo / "data" / "events.jsonl").open())}
    later = sum(e["t"] >= 5.0 for vid in heldout for e in events[vid])
    assert 0 < later < everything["events"]
    for settings in ({"min_event_s": 5.0}, {"cut_s": 4.0}):
        part = tool.breakdown(smoke_demo, smoke_demo / "bundle", **settings)["accuracy"]["all"]["all"]
        assert part["events"] == later, settings


def _breakdown_tool():
    from mmduplex.demo import breakdown

    return breakdown


def test_breakdown_knows_when_each_frame_reached_the_model():
    """The tool's ``delivered_steps`` (the step a frame's last token leaves the slot queue) agrees with the packer
    the model is fed by, on frames that overflow their step's slots and wait behind each other."""
    import torch

    from mmduplex.lm.alignment import pack_video
    from mmduplex.tokenizer.base import FrameTokens

    tool = _breakdown_tool()
    counts = [30, 4, 0, 7, 20, 20, 1, 0, 12]
    frames, value = [], 1.0
    for k, n in enumerate(counts):  # 2 fps on a 5 Hz grid; every token a distinct value
        tokens = torch.arange(value, value + n).unsqueeze(1).expand(n, 2).clone()
        frames.append(FrameTokens(k / 2.0, "flow" if n else "none", tokens, torch.zeros(n, dtype=torch.long)))
        value += n
    slots, mask = pack_video(frames, 40, 8, 5.0, 2)
    step_of = {float(v): s for s in range(40) for v, m in zip(slots[s, :, 0], mask[s], strict=True) if m}
    expected = [max(step_of[float(v)] for v in f.tokens[:, 0]) if f.n_tokens else int(f.t * 5) for f in frames]
    delivered = tool.delivered_steps(frames, 8, 5.0)
    assert delivered == expected and delivered[0] == 3 and delivered[1] == 4  # 30 tokens: steps 0-3; then 4 more
    assert tool.video_on_time(frames, delivered, 0.4, 5) and not tool.video_on_time(frames, delivered, 0.4, 4)


def test_pages_mark_hits_misses_and_tokens(smoke_demo):
    report = json.loads((smoke_demo / "report.json").read_text())
    heldout = json.loads((smoke_demo / "data" / "split.json").read_text())["heldout"]
    index = (smoke_demo / "index.html").read_text()
    assert all(f'href="{vid}.html"' in index for vid in heldout)
    assert f"<td>{report['event_accuracy']:.3f}</td>" in index and "text only" in index
    events = {r["video"]: r["events"] for r in map(json.loads, (smoke_demo / "data" / "events.jsonl").open())}
    rows = hits = 0
    for vid in heldout:
        page = (smoke_demo / f"{vid}.html").read_text()
        reference = re.search(r'<table id="reference">(.*?)</table>', page, re.S).group(1)
        marks = re.findall(r'<tr class="(hit|miss)">', reference)
        assert len(marks) == len(events[vid])
        rows, hits = rows + len(marks), hits + marks.count("hit")
        model = re.search(r'<table id="model">(.*?)</table>', page, re.S).group(1)
        judged = re.findall(r'<tr class="(?:hit|early|invented)">', model)
        assert len(judged) == len(read_vtt(smoke_demo / f"{vid}.vtt"))
        assert page.count('class="frame"') > 0 and '<track id="commentary"' in page
    assert hits / rows == pytest.approx(report["event_accuracy"])


@pytest.fixture
def served_demo(smoke_demo):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(smoke_demo))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _dump_dom(browser: str, url: str, profile: Path) -> str:
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--mute-audio",
        f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", url,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert "<body" in result.stdout, f"no DOM dumped (exit {result.returncode}): {result.stderr[-2000:]}"
    return result.stdout


def test_pages_load_in_chromium(smoke_demo, served_demo, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium); the demo pages are not browser-checked")
    index = _dump_dom(browser, f"{served_demo}/index.html", tmp_path / "profile")
    assert '<table id="results">' in index
    links = re.findall(r'<a href="([^"]+\.html)"', index)
    assert links
    for link in links:
        assert (smoke_demo / html.unescape(link)).is_file(), link
    page = _dump_dom(browser, f"{served_demo}/{links[0]}", tmp_path / "profile")
    assert '<table id="reference">' in page and '<table id="model">' in page
    body = re.search(r"<body([^>]*)>", page).group(1)
    assert "data-track-error" not in body and "data-track-cues" in body, body


def test_demo_print_config_and_bad_recipe(tmp_path, capsys):
    assert main(["demo", "--config", "smoke", "--print_config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["num_videos"] == 80
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_vidoes: 3\n")
    assert main(["demo", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "num_vidoes" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_data_seed_and_training_seed_are_separate(tmp_path, capsys, monkeypatch):
    """``--seed`` retrains on the same data (Lightning's seed, the batch order); ``--data-seed`` makes other data."""
    from mmduplex.demo import stages

    assert main(["demo", "--config", "smoke", "--seed", "3", "--data-seed", "5", "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["seed"], printed["data_seed"], printed["score_split"]) == (3, 5, "heldout")
    config = DemoConfig.from_yaml(recipe_path("demo/smoke"))
    seen = []
    monkeypatch.setattr(
        "mmduplex.train.synthetic_cache.prepare_synthetic_cache",
        lambda data, features, synthetic, **_: seen.append(synthetic),
    )
    paths = stages.DemoPaths(tmp_path)
    for seed, data_seed in ((0, 0), (1, 0), (0, 2)):
        stages.make_data(replace(config, seed=seed, data_seed=data_seed), paths)
        args = stages.duplex_fit_args(replace(config, seed=seed, data_seed=data_seed), paths, "bflow", 4)
        assert args[args.index("--seed_everything") + 1] == str(seed)
        assert args[args.index("--data.init_args.seed") + 1] == str(seed)
    assert [s.seed for s in seen] == [0, 0, 2]  # the data depend on the data seed alone


def test_score_split_val_needs_a_val_split(capsys):
    config = DemoConfig.from_yaml(recipe_path("demo/smoke"))
    with pytest.raises(InputError, match="score_split"):
        replace(config, score_split="val")
    assert replace(config, score_split="val", val_fraction=0.1).score_split == "val"
    with pytest.raises(InputError, match="selected_on"):
        replace(config, selected_on="test")
    with pytest.raises(SystemExit):  # argparse's choices: usage and exit status 2
        main(["demo", "--config", "smoke", "--score-split", "test", "--print_config"])
    assert "invalid choice: 'test'" in capsys.readouterr().err


def test_each_model_trains_at_its_own_learning_rate(tmp_path):
    from dataclasses import replace

    from mmduplex.demo.stages import DemoPaths, duplex_fit_args
    from mmduplex.errors import InputError
    from mmduplex.tokenizer.bflow import BFlowConfig, BFlowTokenizer

    config = DemoConfig.from_yaml(recipe_path("demo/smoke"))
    paths = DemoPaths(tmp_path)
    BFlowTokenizer(BFlowConfig(dim=8, grid=(2, 2), num_key_tokens=2)).save_pretrained(paths.tokenizer)
    tuned = replace(config, model_lr={"uniform_tokens": 0.001})

    def lr(cfg, name):
        args = duplex_fit_args(cfg, paths, name, 4)
        return args[args.index("--model.init_args.lr") + 1] if "--model.init_args.lr" in args else None

    assert lr(tuned, "uniform_tokens") == "0.001" and lr(tuned, "bflow") is None and lr(tuned, "text_only") is None
    assert lr(config, "uniform_tokens") is None
    for bad in ({"uniform": 0.001}, {"bflow": 0.0}):
        with pytest.raises(InputError, match="model_lr"):
            replace(config, model_lr=bad)


def test_demo_refuses_a_folder_made_with_other_settings(smoke_demo, tmp_path, capsys):
    assert main(["demo", "--out", str(smoke_demo), "--config", "smoke", "--seed", "7"]) == 2
    assert "seed" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["demo", "--out", str(tmp_path), "--config", "smoke"]) == 2
    assert (tmp_path / "notes.txt").read_text() == "mine" and not (tmp_path / "report.json").exists()


class _TalksBelow:
    """A stand-in session that says one word every 2 s when its PAD bias is below ``threshold`` (a greedy model
    that switches from silence to talking at one bias, like the text-only baseline)."""

    step_hz, fps = 5.0, 2.0
    cache = SimpleNamespace(length=0)

    def __init__(self, threshold: float) -> None:
        self.threshold, self.pad_bias = threshold, 0.0
        self.reset()

    def reset(self) -> None:
        self.step_index = self.video_tokens = self.dropped_video_tokens = 0

    def push_features(self, t, patches) -> None:
        pass

    def step(self):
        k, self.step_index = self.step_index, self.step_index + 1
        talk = self.pad_bias < self.threshold and k % 10 == 0
        return SimpleNamespace(t=(k + 1) / self.step_hz, word="red" if talk else None, word_start=True, elapsed_s=0.0,
                               flushed=False)  # fmt: skip

    def flush(self, wait=None):
        return iter(())


def test_pad_bias_search_on_training_videos(smoke_demo):
    from mmduplex.data.synthetic import SyntheticDataset
    from mmduplex.demo.stream import BIAS_RESOLUTION, tune_pad_bias
    from mmduplex.io.feature_cache import FeatureCache

    dataset, cache = SyntheticDataset(smoke_demo / "data"), FeatureCache(smoke_demo / "features")
    ids = dataset.video_ids("train")[:2]
    silent = _TalksBelow(-1.3)
    found = tune_pad_bias(silent, dataset, cache, ids, None, 3, batch=1)
    assert -1.3 - BIAS_RESOLUTION <= found["pad_bias"] < -1.3 and silent.pad_bias == found["pad_bias"]
    assert found["talk_ratio_train"] > 0.3 and found["target"] > 1 and found["videos"] == 2
    talking = _TalksBelow(1.0)
    at_zero = tune_pad_bias(talking, dataset, cache, ids, 0.5, 3, batch=1)["talk_ratio_train"]
    kept = tune_pad_bias(talking, dataset, cache, ids, at_zero, 3, batch=1)
    assert kept["pad_bias"] == 0.0 and kept["tried"] == [[0.0, round(at_zero, 4)]]


def test_a_run_recorded_before_a_setting_existed_is_reused_at_its_default(tmp_path):
    from dataclasses import asdict, replace

    from mmduplex.demo.run import SETTINGS_FILE, DemoPaths, check_reusable
    from mmduplex.errors import InputError

    config = DemoConfig.from_yaml(recipe_path("demo/smoke"))
    older = {k: v for k, v in json.loads(json.dumps(asdict(config))).items() if k != "ablation_videos"}
    (tmp_path / SETTINGS_FILE).write_text(json.dumps(older))
    check_reusable(DemoPaths(tmp_path), config)  # the default: the same run
    (tmp_path / SETTINGS_FILE).write_text(json.dumps(older))
    with pytest.raises(InputError, match="ablation_videos"):
        check_reusable(DemoPaths(tmp_path), replace(config, ablation_videos=3))


def test_text_only_model_is_streamed_without_decoding_the_videos(smoke_demo):
    """The demo streams its text-only baseline at the cached frames' times without decoding or encoding a video:
    the same steps and words as the video path (a model that reads no video cannot tell them apart)."""
    from mmduplex.data.synthetic import SyntheticDataset
    from mmduplex.demo.stream import stream_features, stream_video
    from mmduplex.inference.session import DuplexSession
    from mmduplex.io.feature_cache import FeatureCache, video_key

    dataset = SyntheticDataset(smoke_demo / "data")
    cache = FeatureCache(smoke_demo / "features")
    report = json.loads((smoke_demo / "report.json").read_text())
    bias = report["baselines"]["text_only"]["pad_bias"]
    session = DuplexSession.from_bundle(smoke_demo / "baselines" / "text_only" / "bundle", pad_bias=bias)
    for vid in dataset.video_ids("heldout")[:2]:
        record = cache.load(video_key(dataset.video_path(vid)))
        video = stream_video(session, dataset.video_path(vid), pause_steps=3)
        cached = stream_features(session, vid, record.timestamps.tolist(), record.patches, pause_steps=3)
        assert (cached.steps, cached.words, [line.text for line in cached.lines]) == (
            video.steps, video.words, [line.text for line in video.lines]
        )  # fmt: skip
        assert video.steps > 0


def test_demo_streams_videos_in_lockstep_batches_as_each_alone(smoke_demo):
    """The demo's scoring streams held-out videos several at a time (``stream_many``, longest first, results back in
    the given order): each video's steps, tokens and words are those of streaming it alone (``stream_video``), for
    decoded videos and for cached features."""
    from mmduplex.data.synthetic import SyntheticDataset
    from mmduplex.demo.stream import feature_pairs, stream_features, stream_many, stream_video
    from mmduplex.inference.commentary import open_frames
    from mmduplex.inference.session import DuplexSession
    from mmduplex.io.feature_cache import FeatureCache, video_key

    dataset = SyntheticDataset(smoke_demo / "data")
    cache = FeatureCache(smoke_demo / "features")
    report = json.loads((smoke_demo / "report.json").read_text())
    session = DuplexSession.from_bundle(smoke_demo / "bundle", pad_bias=report["details"]["bflow"]["pad_bias"])
    ids = dataset.video_ids("heldout")[:3]
    records = [cache.load(video_key(dataset.video_path(vid))) for vid in ids]
    lengths = [len(r.timestamps) for r in records]
    assert len(set(lengths)) > 1  # the longest-first order is exercised
    alone = [stream_video(session, dataset.video_path(vid), pause_steps=3) for vid in ids]
    decoded = stream_many(session, [(vid, open_frames(dataset.video_path(vid), session)) for vid in ids], 3, lengths)
    cached = stream_many(
        session,
        [(v, feature_pairs(r.timestamps.tolist(), r.patches)) for v, r in zip(ids, records, strict=True)],
        3,
        lengths,
        batch=2,
    )
    single = [
        stream_features(session, v, r.timestamps.tolist(), r.patches, 3) for v, r in zip(ids, records, strict=True)
    ]
    assert sum(len(a.words) for a in alone) > 0
    for one, many in [*zip(alone, decoded, strict=True), *zip(single, cached, strict=True)]:
        assert many.video_id == one.video_id
        assert (many.steps, many.video_tokens, many.words) == (one.steps, one.video_tokens, one.words)
        assert [line.text for line in many.lines] == [line.text for line in one.lines]
    assert decoded[0].frame_tokens == alone[0].frame_tokens


def test_questions_are_asked_in_lockstep_batches_as_each_alone(smoke_demo):
    """``stream_asking_many`` (the demo's questions while watching, several videos at once) gives each video the
    words and the questions' feed times of ``stream_asking`` on that video alone."""
    from mmduplex.data.synthetic import SyntheticDataset
    from mmduplex.demo.qa import stream_asking, stream_asking_many
    from mmduplex.demo.stream import lines_of
    from mmduplex.inference.session import DuplexSession
    from mmduplex.io.feature_cache import FeatureCache, video_key

    dataset, cache = SyntheticDataset(smoke_demo / "data"), FeatureCache(smoke_demo / "features")
    session = DuplexSession.from_bundle(smoke_demo / "bundle")
    ids = [vid for vid in dataset.video_ids("train") if dataset.questions(vid)][:3] + dataset.video_ids("train")[:1]
    records = [cache.load(video_key(dataset.video_path(vid))) for vid in ids]
    videos = [(v, r.timestamps.tolist(), r.patches, dataset.questions(v)) for v, r in zip(ids, records, strict=True)]
    assert sum(bool(questions) for *_, questions in videos) == 3
    many = stream_asking_many(session, videos, 3, batch=2)
    for (vid, times, patches, questions), (result, asked) in zip(videos, many, strict=True):
        outputs, alone = stream_asking(session, times, patches, questions)
        lines, steps, words = lines_of(outputs, 3)
        assert result.video_id == vid and (result.steps, result.words) == (steps, words)
        assert [line.text for line in result.lines] == [line.text for line in lines]
        assert [a.fed_s for a in asked] == [a.fed_s for a in alone]
        assert all(a.fed_s is not None for a in asked[:1])


def test_summary_reports_the_wall_time_against_the_configs_own_target(tmp_path):
    from dataclasses import asdict

    from mmduplex.demo.pages import summary_lines
    from mmduplex.demo.run import SETTINGS_FILE, DemoPaths, check_reusable

    main_figures = {"event_accuracy": 0.5, "median_latency_s": 1.0, "video_tokens_per_second": 5.0}
    for recipe, target in (("demo/default", 600), ("demo/smollm2", 3600), ("demo/smollm2_projector", 3600)):
        config = DemoConfig.from_yaml(recipe_path(recipe))
        report = {"wall_s": 1234.4, "details": {"bflow": main_figures}, "baselines": {},
                  "settings": {"demo": json.loads(json.dumps(asdict(config)))}}  # fmt: skip
        assert summary_lines(report)[0] == f"wall time: 1234 s (target <= {target} s)"
    config = DemoConfig.from_yaml(recipe_path("demo/smoke"))
    (tmp_path / SETTINGS_FILE).write_text(json.dumps(asdict(replace(config, wall_target_s=60.0))))
    check_reusable(DemoPaths(tmp_path), config)  # a target only changes the summary: the run is reused


def test_the_main_models_token_store_is_built_before_the_models(smoke_demo, tmp_path, monkeypatch):
    """``prepare_token_store`` (the stage before the models) leaves the main model's token store complete, so the main
    model's fit tokenizes nothing on its own path; without it that fit would tokenize every video itself."""
    from mmduplex.demo.stages import DemoPaths, duplex_fit_args, prepare_token_store
    from mmduplex.train.duplex_datamodule import DuplexDataModule
    from mmduplex.train.lightning_cli import run_cli
    from mmduplex.train.token_store import TokenStore

    config = DemoConfig.from_yaml(recipe_path("demo/smoke"))
    paths = DemoPaths(smoke_demo)
    paths.bundle = tmp_path / "bundle"  # as before the main model is trained
    monkeypatch.setattr(DuplexDataModule, "token_store_root", lambda self, fingerprint: tmp_path / "tokens")

    def main_fit_setup():  # what the main model's fit does in its setup (DuplexModule.setup, first rank)
        cli = run_cli(duplex_fit_args(config, paths, "bflow", 1), run=False)
        cli.datamodule.setup()
        cli.model.build_token_store(cli.datamodule)

    def refuse(*args, **kwargs):
        raise AssertionError("the main model's fit tokenized videos")

    with monkeypatch.context() as patched:
        patched.setattr(TokenStore, "_tokenize", refuse)
        with pytest.raises(AssertionError, match="tokenized videos"):  # the control: an empty store is filled there
            main_fit_setup()
    prepare_token_store(config, paths, tokens_per_frame=1)
    monkeypatch.setattr(TokenStore, "_tokenize", refuse)
    main_fit_setup()  # nothing left to tokenize
