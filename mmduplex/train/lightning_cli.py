"""LightningCLI for ``mmduplex fit|validate|test|predict --config recipes/<stage>/<name>.yaml``.

Model and data are given by ``class_path`` in the recipes (subclass mode), so one CLI trains both the B-Flow
tokenizer (:mod:`tokenizer`) and the duplex model (:mod:`mmduplex`). Recipes hold only what differs from the
constructor defaults; ``--print_config`` shows the full resolved configuration.
"""

from __future__ import annotations

import sys

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI


class MMDuplexCLI(LightningCLI):
    """LightningCLI with the project's defaults (config saved next to every run, overwrite allowed)."""


def run_cli(args: list[str], run: bool = True) -> MMDuplexCLI:
    """Run the CLI on ``args`` (e.g. ``["fit", "--config", "recipes/tokenizer/tiny.yaml"]``); with ``run=False``
    only build the model, data module and trainer ``args`` describe (no subcommand in ``args``).

    ``args`` is handed over as ``sys.argv`` (restored afterwards): LightningCLI's DDP launcher re-executes
    ``sys.argv`` in its worker processes, so it must hold the real command, whoever called this function.
    """
    saved = sys.argv
    sys.argv = [saved[0] if saved else "mmduplex", *args]
    try:
        return MMDuplexCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            run=run,
        )
    finally:
        sys.argv = saved
