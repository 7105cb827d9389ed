"""B-Flow video tokenizer: frozen CLIP patch features -> keyframe / flow tokens, baselines, fidelity, training."""

from tokenizer.base import FrameTokens, TokenizedVideo, VideoTokenizer
from tokenizer.baselines import (
    CodecTokenizer,
    FrameDropTokenizer,
    NoVideoTokenizer,
    UniformTokenizer,
    VideoLLMOnlineTokenizer,
)
from tokenizer.bflow import BFlowConfig, BFlowTokenizer
from tokenizer.encoder import FrozenCLIP, FrozenImageEncoder, create_encoder
from tokenizer.fidelity import fidelity, normalize_features

# Lightning classes load on first use, so importing the tokenizer (or its encoder) does not import Lightning.
_LAZY = {"BFlowModule": "tokenizer.module", "FeatureDataModule": "tokenizer.datamodule"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tokenizer' has no attribute {name!r}")


__all__ = [
    "BFlowConfig",
    "BFlowModule",
    "BFlowTokenizer",
    "CodecTokenizer",
    "FeatureDataModule",
    "FrameDropTokenizer",
    "FrameTokens",
    "FrozenCLIP",
    "FrozenImageEncoder",
    "TokenizedVideo",
    "NoVideoTokenizer",
    "UniformTokenizer",
    "VideoLLMOnlineTokenizer",
    "VideoTokenizer",
    "create_encoder",
    "fidelity",
    "normalize_features",
]
