"""The reduced demo (recipes/demo/smoke.yaml) end to end through the CLI: every stage, every output, the report keys,
re-running reuses the stages, and the trained model beats the text-only baseline."""

from __future__ import annotations

import json

import pytest

from mmduplex.cli import main
from mmduplex.demo import DemoConfig

REPORT_KEYS = {
    "event_accuracy",
    "event_precision",
    "median_latency_s",
    "video_tokens_per_second",
    "wall_s",
    "settings",
    "baselines",
}
FIGURES = {"event_accuracy", "event_precision", "median_latency_s", "video_tokens_per_second"}


@pytest.fixture(scope="module")
def smoke_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out), "--config", "smoke"]) == 0
    return out


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
    assert (
        report["settings"]["demo"]["num_videos"]
        == DemoConfig.from_yaml(__import__("recipes").recipe_path("demo/smoke")).num_videos
    )


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


def test_demo_print_config_and_bad_recipe(tmp_path, capsys):
    assert main(["demo", "--config", "smoke", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["num_videos"] == 80
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_vidoes: 3\n")
    assert main(["demo", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "num_vidoes" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_demo_refuses_a_folder_made_with_other_settings(smoke_demo, tmp_path, capsys):
    assert main(["demo", "--out", str(smoke_demo), "--config", "smoke", "--seed", "7"]) == 2
    assert "seed" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["demo", "--out", str(tmp_path), "--config", "smoke"]) == 2
    assert (tmp_path / "notes.txt").read_text() == "mine" and not (tmp_path / "report.json").exists()
