"""Spawned worker processes that end with the process that started them.

Every process pool of the package (the demo's models, the synthetic set's renderers, the feature extractors, the rate
curve's points) starts its workers with :func:`watch_parent` as (part of) their initializer: a demo killed mid-stage
(``kill``, Ctrl-C twice) must not leave its workers rendering, encoding or training on, adopted by init.
"""

from __future__ import annotations

import os
import threading
import time


def watch_parent(interval_s: float = 1.0) -> threading.Thread:
    """End this (worker) process as soon as the process that started it is gone. A daemon thread polls the parent's
    pid, which changes when the parent dies."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os._exit(1)

    thread = threading.Thread(target=watch, name="mmduplex-watch-parent", daemon=True)
    thread.start()
    return thread
