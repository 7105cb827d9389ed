"""The ablation notebooks: committed without outputs, and both run end to end (nbclient) on tiny settings.

The session's ``smoke`` demo run (``conftest.smoke_demo``, shared with the demo tests) feeds both notebooks through
``MMDUPLEX_NOTEBOOK_DEMO_DIR``; ``MMDUPLEX_NOTEBOOK_SMALL=1`` switches them to their tiny settings.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from conftest import one_torch_thread
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ("tokenizer_rate_ablation.ipynb", "stream_walkthrough.ipynb")


def _execute(name: str, demo_dir: Path, out_dir: Path, monkeypatch) -> nbformat.NotebookNode:
    monkeypatch.setenv("MMDUPLEX_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MMDUPLEX_NOTEBOOK_OUT", str(out_dir))
    monkeypatch.setenv("MMDUPLEX_NOTEBOOK_DEMO_DIR", str(demo_dir))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    # Timeouts (per cell, kernel start) guard against a hang only: a busy machine may be slow.
    client = NotebookClient(nb, timeout=900, startup_timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(out_dir)}})  # fmt: skip
    client.execute()
    return nb


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_is_clean(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and "parameters" in code[0].metadata.get("tags", [])
    assert "MMDUPLEX_NOTEBOOK_SMALL" in code[0].source and "OUT_DIR" in code[0].source
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, f"{name}: outputs not stripped"
    assert nb.metadata.kernelspec.name == "python3"
    assert not any("class " in cell.source or "nn.Module" in cell.source for cell in code), "notebooks define no model"


def test_rate_ablation_notebook_runs(smoke_demo, tmp_path, monkeypatch):
    nb = _execute("tokenizer_rate_ablation.ipynb", smoke_demo, tmp_path, monkeypatch)
    assert any(out.get("output_type") == "display_data" for cell in nb.cells for out in cell.get("outputs", []))
    table = json.loads((tmp_path / "rate_fidelity.json").read_text())
    assert {row["set"] for row in table["rows"]} == {"synthetic held-out", "real mp4"}
    budgets = sorted(row["budget"] for row in table["rows"] if row["kind"] == "bflow" and row["budget"] is not None)
    assert budgets == sorted([4.0, 8.0, 16.0, 32.0] * 2)
    for row in table["rows"]:
        assert row["tokens_per_second"] > 0 and -1.0 <= row["fidelity"] <= 1.0
        if row["budget"] is not None:  # the budget bounds the rate after the first keyframe (+ one bucket)
            assert row["tokens_per_second_after_first_keyframe"] <= row["budget"] * 1.5 + 16
    curve = json.loads((tmp_path / "curve" / "curve.json").read_text())
    assert [p["point"] for p in curve["points"]] == ["bflow"] and curve["points"][0]["from_demo"] == [True]
    report = json.loads((smoke_demo / "report.json").read_text())
    assert curve["points"][0]["event_accuracy"]["mean"] == report["details"]["bflow"]["event_accuracy"]
    assert (tmp_path / "rate_vs_fidelity.png").stat().st_size > 0
    assert (tmp_path / "curve" / "curve.png").stat().st_size > 0
    assert not list((tmp_path / "curve").glob("*/bundle"))  # SMALL trains nothing


def test_stream_walkthrough_notebook_runs(smoke_demo, tmp_path, monkeypatch):
    _execute("stream_walkthrough.ipynb", smoke_demo, tmp_path, monkeypatch)
    (summary_path,) = tmp_path.glob("stream_*.json")
    summary = json.loads(summary_path.read_text())
    report = json.loads((smoke_demo / "report.json").read_text())
    assert summary["video"] in summary_path.name
    assert summary["tokens_total"] == summary["keyframes"] * 16 + summary["flow_tokens"]
    assert summary["events"] > 0 and 0.0 <= summary["event_accuracy"] <= 1.0
    assert summary["frames"] > 0 and summary["steps"] >= summary["frames"]
    assert report["settings"]["heldout_videos"] >= 1
    assert (tmp_path / f"stream_{summary['video']}.png").stat().st_size > 0


def test_rate_curve_trains_each_point_once(smoke_demo, tmp_path):
    """``mmduplex.demo.curve`` on the smoke demo: a B-Flow budget and a uniform count trained and scored as the demo
    scores (the demo's own model read from its report), uniform given slots that carry its tokens, finished points
    reused on a rerun, a folder made with other settings refused, B-Flow read against uniform at its own rate."""
    from mmduplex.demo import curve
    from mmduplex.errors import InputError

    out = tmp_path / "curve"
    with one_torch_thread():
        summary = curve.run_curve(smoke_demo, out, budgets=[4.0], uniform=[32], seeds=[0])
    points = {p["point"]: p for p in summary["points"]}
    assert list(points) == ["bflow", "bflow-4", "uniform-32"]
    assert points["bflow"]["from_demo"] == [True] and points["bflow-4"]["from_demo"] == [False]
    for point in points.values():
        assert 0.0 <= point["event_accuracy"]["mean"] <= 1.0 and point["event_accuracy"]["n"] == 1
    rates = {name: p["video_tokens_per_second"]["mean"] for name, p in points.items()}
    assert rates["bflow-4"] <= rates["bflow"] + 1e-9
    smoke_fps = json.loads((smoke_demo / "demo_config.json").read_text())["fps"]  # 2 fps, 5 Hz steps, K = 8
    slots = json.loads((out / "uniform-32-seed0" / "result.json").read_text())["figures"]["slots_per_step"]
    assert slots == curve.uniform_slots(32, 8, smoke_fps, 5.0) == 13  # 64 tokens/s into 13 x 5 a second
    assert curve.uniform_slots(16, 8, 5.0, 5.0) == 16 and curve.uniform_slots(2, 8, 5.0, 5.0) == 8
    assert rates["uniform-32"] == pytest.approx(32 * smoke_fps, rel=0.05)  # 32 pooled tokens on every frame
    stamp = (out / "bflow-4-seed0" / "result.json").stat().st_mtime_ns
    again = curve.run_curve(smoke_demo, out, budgets=[4.0], uniform=[32], seeds=[0])
    assert again["points"] == summary["points"]
    assert (out / "bflow-4-seed0" / "result.json").stat().st_mtime_ns == stamp
    result = json.loads((out / "uniform-32-seed0" / "result.json").read_text())
    result["settings"]["demo"]["duplex_epochs"] += 1
    (out / "uniform-32-seed0" / "result.json").write_text(json.dumps(result))
    with pytest.raises(InputError, match="other settings"):
        curve.point_job(str(smoke_demo), str(out), "uniform", 32, 0)
    assert curve.interpolate([(5.0, 0.1), (20.0, 0.3)], 10.0) == pytest.approx(0.2)
    assert curve.interpolate([(5.0, 0.1), (20.0, 0.3)], 40.0) is None
