"""A demo worker process ends when the demo that started it is killed (no orphan left training)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

CHILD = (
    "import time; from mmduplex.workers import watch_parent; watch_parent(0.1); print('ready', flush=True); "
    "time.sleep(120)"
)
PARENT = (
    "import subprocess, sys, time; "
    f"child = subprocess.Popen([sys.executable, '-c', {CHILD!r}], stdout=subprocess.PIPE, text=True); "
    "assert child.stdout.readline().strip() == 'ready'; print(child.pid, flush=True); time.sleep(120)"
)
WATCHLESS = PARENT.replace("watch_parent(0.1); ", "")


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it has exited)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def _orphan_after_parent_killed(parent_code: str, wait_s: float) -> bool:
    """Start a parent that starts a child, kill the parent, and say whether the child still runs ``wait_s`` later."""
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + wait_s
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = _alive(child)
    if alive:
        os.kill(child, signal.SIGKILL)
    return alive


def test_worker_exits_when_its_parent_is_killed():
    assert not _orphan_after_parent_killed(PARENT, wait_s=30.0)


def test_without_the_watch_the_worker_outlives_its_parent():
    # the control: the same processes without watch_parent leave the child running (so the test above can fail)
    assert _orphan_after_parent_killed(WATCHLESS, wait_s=2.0)


def test_every_process_pool_of_the_data_stage_watches_its_parent(tmp_path, monkeypatch):
    """The synthetic set's renderers and the feature extractors (the demo's data stage, one process per core) are
    started with :func:`watch_parent` as their initializer, as the demo's model workers are (a demo killed while it
    rendered or encoded left both running)."""
    import concurrent.futures

    from mmduplex.data.synthetic import SyntheticConfig, generate_dataset
    from mmduplex.train.features import extract_features
    from mmduplex.workers import watch_parent

    initializers = []

    class InlinePool:  # records how the pool is made, runs its jobs here
        def __init__(self, *args, initializer=None, **kwargs):
            initializers.append(initializer)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def submit(self, fn, *args):
            future = concurrent.futures.Future()
            future.set_result(fn(*args))
            return future

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", InlinePool)
    config = SyntheticConfig(num_videos=2, duration_s=(2.0, 2.0), heldout_fraction=0.5)
    dataset = generate_dataset(tmp_path / "data", config, processes=2)
    videos = [dataset.video_path(vid) for vid in dataset.video_ids()]
    report = extract_features(videos, tmp_path / "features", encoder="mmduplex-tiny", fps=2.0, processes=2)
    assert len(report.encoded) == 2
    assert initializers == [watch_parent, watch_parent]
