"""Shared pytest fixtures. Everything runs on CPU with tiny configs; no network, no downloaded weights."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same RNG state, so results never depend on test order."""
    torch.manual_seed(0)
    yield
