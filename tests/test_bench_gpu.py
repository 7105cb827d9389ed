"""``benchmarks.bench_gpu_smollm2`` (the GPU check) runs its whole path on a CPU with the tiny parts, in bf16-mixed.

bf16-mixed training on the CPU uses the same autocast as on a GPU: the frozen B-Flow inside the duplex module must
tokenize in its own precision there (it once failed with a dtype mismatch under autocast).
"""

from __future__ import annotations

import json
import math

from conftest import one_torch_thread

from benchmarks import bench_gpu_smollm2


def test_gpu_check_dry_run_on_cpu(tmp_path):
    out = tmp_path / "gpu"
    argv = ["--out", str(out), "--demo-recipe", "demo/smoke", "--recipe", "duplex/tiny", "--device", "cpu"]
    argv += ["--precision", "bf16-mixed", "--videos", "8", "--heldout", "2", "--max-steps", "13"]
    argv += ["--tokenizer-steps", "3"]
    with one_torch_thread():
        figures = bench_gpu_smollm2.main(argv)
    assert figures["settings"]["videos"] == {"train": 6, "heldout": 2}
    train = figures["train"]
    assert train["steps"] == 13 and train["precision"] == "bf16-mixed"
    assert math.isfinite(train["loss_first10"]) and train["steps_per_s"] > 0
    stream = figures["stream"]
    assert 0.0 <= stream["event_accuracy"] <= 1.0 and stream["events"] > 0
    shown = figures["shown_video"]
    assert shown["steps"] > 0 and shown["step_ms_p50"] > 0
    assert json.loads((out / "figures.json").read_text()) == json.loads(json.dumps(figures))
