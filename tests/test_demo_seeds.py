"""``mmduplex demo --seeds``: the aggregation over seeds, the command line, a failed or refused seed, the reuse of
finished seeds, and one real run of a reduced smoke recipe at two seeds (shared data and features, valid seed folders,
different models)."""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import yaml

from mmduplex.cli import main
from mmduplex.demo.run import DemoConfig, DemoPaths, check_reusable
from mmduplex.demo.seeds import aggregate, seeds_table, spread
from mmduplex.errors import InputError
from mmduplex.recipes import recipe_path


def made_up_report(accuracy: float, **changes) -> dict:
    """A report.json as the demo writes it, with the main model at ``accuracy`` and the others derived from it."""

    def figures(scale: float) -> dict:
        value = accuracy * scale
        return {
            "event_accuracy": value,
            "event_accuracy_by_objects": {"1": value + 0.1, "2+": value - 0.1},
            "event_accuracy_by_history": {"0": value + 0.2, "1+": value - 0.2},
            "median_latency_s": 0.5 + value,
            "video_tokens_per_second": 10.0 * scale,
            "talk_ratio": 1.0 + value,
        }

    report = {
        "details": {"bflow": figures(1.0)},
        "baselines": {"text_only": figures(0.1), "uniform_tokens": figures(0.5)},
        "video_ablation": figures(0.2),
        "qa": None,
        "wall_s": 10.0,
        "settings": {"heldout_videos": 3, "uniform_tokens_per_frame": 4},
    }
    report.update(changes)
    return report


def test_spread_is_the_mean_and_sample_std_of_the_seeds_that_have_the_figure():
    stats = spread([0.5, 0.6, 0.7])
    assert stats["n"] == 3 and stats["mean"] == pytest.approx(0.6) and stats["std"] == pytest.approx(0.1)
    assert (stats["min"], stats["max"]) == (0.5, 0.7)
    gaps = spread([0.2, None, float("nan"), 0.4])
    assert gaps["values"] == [0.2, None, None, 0.4] and gaps["n"] == 2
    assert gaps["mean"] == pytest.approx(0.3) and gaps["std"] == pytest.approx(math.sqrt(0.02))
    assert spread([0.3])["std"] is None and spread([0.3])["mean"] == 0.3
    assert spread([None, None]) == {"values": [None, None], "n": 0, "mean": None, "std": None, "min": None, "max": None}


def test_aggregate_made_up_reports():
    third = made_up_report(0.7)
    del third["baselines"]["uniform_tokens"]  # a model one seed lacks
    del third["details"]["bflow"]["event_accuracy_by_history"]["1+"]  # a figure one seed lacks
    third["details"]["bflow"]["median_latency_s"] = None
    reports = {0: made_up_report(0.5), 4: made_up_report(0.6), 9: third}
    summary = aggregate(reports)
    assert summary["seeds"] == [0, 4, 9]
    models = summary["models"]
    assert list(models) == ["bflow", "text_only", "uniform_tokens", "video_ablation"]
    main_model = models["bflow"]
    assert main_model["event_accuracy"]["values"] == [0.5, 0.6, 0.7]
    assert main_model["event_accuracy"]["mean"] == pytest.approx(0.6)
    assert main_model["event_accuracy"]["std"] == pytest.approx(0.1)
    assert main_model["event_accuracy_by_objects"]["2+"]["mean"] == pytest.approx(0.5)
    assert main_model["event_accuracy_by_history"]["0"]["max"] == pytest.approx(0.9)
    assert main_model["event_accuracy_by_history"]["1+"]["values"] == pytest.approx([0.3, 0.4, None])
    assert main_model["median_latency_s"]["n"] == 2 and main_model["median_latency_s"]["mean"] == pytest.approx(1.05)
    assert main_model["talk_ratio"]["min"] == pytest.approx(1.5)
    assert main_model["video_tokens_per_second"]["std"] == 0.0
    assert models["text_only"]["event_accuracy"]["mean"] == pytest.approx(0.06)
    assert models["uniform_tokens"]["event_accuracy"]["values"] == pytest.approx([0.25, 0.3, None])
    assert models["video_ablation"]["event_accuracy"]["mean"] == pytest.approx(0.12)
    assert summary["qa"] is None
    json.dumps(summary, allow_nan=False)  # no NaN reaches seeds.json


def test_aggregate_questions_and_the_table():
    qa = {"lvb": {"overall": 0.5, "n": 4}, "open_accuracy": 0.4, "median_answer_latency_s": 1.5}
    reports = {
        0: made_up_report(0.5, qa=qa, video_ablation=None),
        1: made_up_report(0.7, qa={**qa, "lvb": None}, video_ablation=None),
    }
    summary = aggregate(reports)
    assert "video_ablation" not in summary["models"]
    assert summary["qa"]["lvb"]["overall"]["values"] == [0.5, None]
    assert summary["qa"]["open_accuracy"]["mean"] == 0.4 and summary["qa"]["open_accuracy"]["std"] == 0.0
    assert summary["qa"]["event_accuracy_with_questions"]["n"] == 0
    table = seeds_table(summary).splitlines()
    assert table[0].startswith("| model | event accuracy | 1 object | 2+ objects | history 0 | history 1+ |")
    main_row = next(line for line in table if line.startswith("| B-Flow duplex (main) |"))
    assert "| 0.600 ± 0.141 |" in main_row and "| 10.0 ± 0.0 |" in main_row
    assert any(line.startswith("| uniform tokens | 0.300 ± 0.071 |") for line in table)


# ----------------------------------------------------------------------------------------------- the command


def test_seeds_and_seed_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--config", "smoke", "--seeds", "0", "1", "--seed", "2", "--print_config"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--config", "smoke", "--seeds", "--print_config"])  # no seed given


def fake_run_demo(calls: list, fail: int | None = None):
    """A stand-in for run_demo that records its calls, writes a made-up report, and fails at seed ``fail``."""

    def run_demo(out_dir, config):
        calls.append((Path(out_dir).name, config.seed))
        if config.seed == fail:
            raise RuntimeError("out of memory")
        report = made_up_report(0.5 + 0.1 * config.seed, settings={"demo": asdict(config)})
        (Path(out_dir) / "report.json").write_text(json.dumps(report))
        return report

    return run_demo


def test_seeds_default_folder_and_other_settings(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = []
    monkeypatch.setattr("mmduplex.demo.seeds.run_demo", fake_run_demo(calls))
    assert main(["demo", "--config", "smoke", "--seeds", "2", "0", "--data-seed", "3"]) == 0
    assert calls == [("seed-2", 2), ("seed-0", 0)]
    summary = json.loads((tmp_path / "demo_seeds" / "seeds.json").read_text())
    assert summary["seeds"] == [2, 0] and summary["settings"]["data_seed"] == 3
    assert summary["models"]["bflow"]["event_accuracy"]["values"] == pytest.approx([0.7, 0.5])
    smoke = DemoConfig.from_yaml(recipe_path("demo/smoke"))
    assert summary["settings"]["demo"]["num_videos"] == smoke.num_videos and "seed" not in summary["settings"]["demo"]
    assert summary["settings"]["scored_on"] == "heldout"
    marker = json.loads((tmp_path / "demo_seeds" / "seed-2" / "demo_config.json").read_text())
    assert (marker["seed"], marker["data_seed"]) == (2, 3)
    out = capsys.readouterr().out
    assert "| B-Flow duplex (main) | 0.600 ± 0.141 |" in out and "training seeds 2 0 (data seed 3)" in out
    # bad seeds, and a folder holding a single demo run
    assert main(["demo", "--config", "smoke", "--seeds", "1", "1"]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert main(["demo", "--config", "smoke", "--seeds", "0", "--out", "demo_seeds/seed-0"]) == 2
    assert "single demo run" in capsys.readouterr().err
    assert len(calls) == 2


def test_a_failed_seed_is_an_error_and_finished_seeds_are_reused(tmp_path, capsys, monkeypatch):
    out = tmp_path / "seeds"
    calls = []
    monkeypatch.setattr("mmduplex.demo.seeds.run_demo", fake_run_demo(calls, fail=1))
    argv = ["demo", "--config", "smoke", "--out", str(out), "--seeds", "0", "1", "2"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "training seed 1 failed" in err and "out of memory" in err and str(out / "seed-1") in err
    assert calls == [("seed-0", 0), ("seed-1", 1)]
    assert not (out / "seeds.json").exists()
    # the rerun reuses seed 0's finished run and runs the others
    monkeypatch.setattr("mmduplex.demo.seeds.run_demo", fake_run_demo(calls))
    assert main(argv) == 0
    assert calls[2:] == [("seed-1", 1), ("seed-2", 2)]
    summary = json.loads((out / "seeds.json").read_text())
    assert summary["models"]["bflow"]["event_accuracy"]["mean"] == pytest.approx(0.6)
    # a seed folder made with other settings is refused before any seed runs
    other = DemoConfig.from_yaml(recipe_path("demo/smoke"))
    check_reusable(DemoPaths(out / "seed-5"), replace(other, seed=5, data_seed=9))
    assert main([*argv, "5"]) == 2
    err = capsys.readouterr().err
    assert "seed-5" in err and "data_seed" in err
    assert len(calls) == 4


# ----------------------------------------------------------------------------------------------- a real run

REDUCED = {  # the smoke recipe cut to seconds: every stage runs, one baseline, no questions
    "num_videos": 12,
    "duration_s": [6.0, 8.0],
    "heldout_fraction": 0.25,
    "tokenizer_steps": 4,
    "duplex_epochs": 1,
    "baselines": ["text_only"],
    "workers": 1,
    "talk_tuning_videos": 1,
    "ablation_videos": 1,
    "question_interval_s": 0.0,
}


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_seeds")
    recipe = {**yaml.safe_load(recipe_path("demo/smoke").read_text()), **REDUCED}
    (root / "reduced.yaml").write_text(yaml.safe_dump(recipe))
    argv = ["demo", "--seeds", "0", "1", "--config", str(root / "reduced.yaml"), "--out", str(root / "out")]
    with pytest.MonkeyPatch.context() as patch:  # render and encode in this process: spawning two costs more here
        patch.setattr(os, "sched_getaffinity", lambda _: {0}, raising=False)
        assert main(argv) == 0
    return root / "out", DemoConfig.from_yaml(root / "reduced.yaml"), argv


def test_seeds_share_the_data_and_features(two_seeds):
    out, _, _ = two_seeds
    first, second = DemoPaths(out / "seed-0"), DemoPaths(out / "seed-1")
    shared = [f for f in first.data.rglob("*") if f.is_file()] + [f for f in first.features.glob("*") if f.is_file()]
    shards = [f for f in shared if f.suffix == ".safetensors"]
    assert len(shards) == 12 and len([f for f in shared if f.suffix == ".mp4"]) == 12
    for source in shared:
        twin = second.root / source.relative_to(first.root)
        if source.name == "index.json":  # the same entries, each naming the seed's own video
            mine, theirs = (json.loads(p.read_text()) for p in (twin, source))
            assert mine["videos"].keys() == theirs["videos"].keys() and mine["encoder"] == theirs["encoder"]
            for key, entry in mine["videos"].items():
                assert entry["source"] == str((second.data / "videos" / f"{key}.mp4").resolve())
                assert {**entry, "source": None} == {**theirs["videos"][key], "source": None}
        else:  # the same file, and never rewritten by seed 1's run (an atomic write would break the link)
            assert os.path.samefile(source, twin), twin
    # trained per seed: the tokenizer, the models, the token stores of each seed's models
    inodes = [
        {f.stat().st_ino for own in ("tokenizer", "bundle", "features/tokens") for f in (root / own).rglob("*.*")}
        for root in (first.root, second.root)
    ]
    assert len(inodes[1]) > 4 and not inodes[0] & inodes[1]


def test_seed_folders_are_demo_folders_with_their_own_models(two_seeds):
    from mmduplex.demo.stages import make_data

    out, config, _ = two_seeds
    for seed in (0, 1):
        paths = DemoPaths(out / f"seed-{seed}")
        assert json.loads((paths.root / "demo_config.json").read_text()) == json.loads(
            json.dumps(asdict(replace(config, seed=seed)))
        )
        check_reusable(paths, replace(config, seed=seed))  # `mmduplex demo --out DIR/seed-N --seed N` accepts it
        with pytest.raises(InputError, match="seed"):
            check_reusable(paths, replace(config, seed=1 - seed))
    paths = DemoPaths(out / "seed-1")
    index = (paths.features / "index.json").read_bytes()
    shard = next(paths.features.glob("*.safetensors"))
    make_data(replace(config, seed=1), paths)  # the demo's own data stage finds everything done
    assert (paths.features / "index.json").read_bytes() == index
    assert os.path.samefile(shard, out / "seed-0" / "features" / shard.name)
    weights = [(out / f"seed-{seed}" / "bundle" / "model.safetensors").read_bytes() for seed in (0, 1)]
    assert weights[0] != weights[1]


def test_seeds_json_holds_each_seeds_figures(two_seeds):
    out, config, _ = two_seeds
    summary = json.loads((out / "seeds.json").read_text())
    reports = [json.loads((out / f"seed-{seed}" / "report.json").read_text()) for seed in (0, 1)]
    assert summary["seeds"] == [0, 1] and set(summary["models"]) == {"bflow", "text_only", "video_ablation"}
    accuracy = summary["models"]["bflow"]["event_accuracy"]
    assert accuracy["values"] == [r["event_accuracy"] for r in reports]
    assert accuracy["mean"] == pytest.approx(statistics.fmean(accuracy["values"]))
    talk = summary["models"]["text_only"]["talk_ratio"]
    assert talk["values"] == [r["baselines"]["text_only"]["talk_ratio"] for r in reports]
    assert talk["std"] == pytest.approx(statistics.stdev(talk["values"]))
    assert [r["settings"]["demo"]["seed"] for r in reports] == [0, 1]
    assert summary["settings"]["demo"] == {
        k: v for k, v in json.loads(json.dumps(asdict(config))).items() if k != "seed"
    }
    assert summary["settings"]["per_seed"]["1"]["wall_s"] == reports[1]["wall_s"] and summary["wall_s"] > 0


def test_rerun_reuses_finished_seeds(two_seeds, monkeypatch, capsys):
    out, _, argv = two_seeds
    before = json.loads((out / "seeds.json").read_text())

    def refuse(*_):
        raise AssertionError("a finished seed ran again")

    monkeypatch.setattr("mmduplex.demo.seeds.run_demo", refuse)
    assert main(argv) == 0
    after = json.loads((out / "seeds.json").read_text())
    assert after["models"] == before["models"]
    assert "| B-Flow duplex (main) |" in capsys.readouterr().out
