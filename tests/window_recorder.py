"""A Lightning callback for tests run in child processes (DDP): which windows each rank trained on, and where the
token store it read lives, written to ``<out>/rank<r>.json`` when training ends."""

from __future__ import annotations

import json
from pathlib import Path

from lightning.pytorch import Callback


class WindowRecorder(Callback):
    """Records the ``window`` indices of every training batch.

    Args:
        out: folder of the ``rank<r>.json`` files.
    """

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.windows: list[list[int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.windows.append(list(batch["window"]))

    def on_train_end(self, trainer, pl_module) -> None:
        data = trainer.datamodule
        record = {"rank": trainer.global_rank, "world": trainer.world_size, "batches": self.windows,
                  "store": str(data.store.root), "shards": len(data.store.index["shards"]),
                  "samples": len(data.train_samples)}  # fmt: skip
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
