"""A demo worker process ends when the demo that started it is killed (no orphan left training)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

CHILD = (
    "import time; from mmduplex.demo.stages import watch_parent; watch_parent(0.1); print('ready', flush=True); "
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
