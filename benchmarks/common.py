"""Small helpers every benchmark script shares: what machine it ran on, a header, and a wall-clock timer."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from collections.abc import Callable
from types import TracebackType

import psutil

# Packages whose versions matter for the figures.
_PACKAGES = ("torch", "decord", "av", "transformers", "open_clip_torch")


def machine_info() -> dict:
    """CPU model, core counts, RAM, Python and key package versions, and the thread setting."""
    versions = {}
    for package in _PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": _cpu_model(),
        "cores_logical": psutil.cpu_count(logical=True),
        "cores_physical": psutil.cpu_count(logical=False),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        **versions,
    }


def print_header(title: str) -> dict:
    """Print a title and the machine description; return the description (for JSON outputs)."""
    info = machine_info()
    print(f"# {title}")
    for key, value in info.items():
        print(f"#   {key}: {value}")
    print()
    return info


class Timer:
    """``with Timer() as timer: ...`` then ``timer.seconds`` (wall clock) and ``timer.cpu_seconds``.

    ``cpu_seconds`` is this process's CPU time over all its threads: on a machine shared with other jobs it
    varies far less than wall time, so compare methods on both.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self._start = self._cpu_start = 0.0

    def __enter__(self) -> Timer:
        self._start, self._cpu_start = time.perf_counter(), time.process_time()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.seconds = time.perf_counter() - self._start
        self.cpu_seconds = time.process_time() - self._cpu_start


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


QWEN_05B: dict = {  # Qwen2.5-0.5B's shape (the hub model's config.json), built with random weights: no download
    "model_type": "qwen2",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
}


def best_of(function: Callable[[], int], repeats: int) -> tuple[float, float, int]:
    """Fastest wall and CPU seconds over ``repeats`` runs, and the count (frames, steps) the function returned."""
    wall, cpu, count = float("inf"), float("inf"), 0
    for _ in range(repeats):
        with Timer() as timer:
            count = function()
        wall, cpu = min(wall, timer.seconds), min(cpu, timer.cpu_seconds)
    return wall, cpu, count
