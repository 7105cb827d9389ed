"""B-Flow video tokenizer: frozen CLIP patch features -> keyframe / flow tokens, baselines, fidelity, training."""

from tokenizer.base import FrameTokens, TokenizedVideo, VideoTokenizer
from tokenizer.baselines import CodecTokenizer, FrameDropTokenizer, UniformTokenizer, VideoLLMOnlineTokenizer
from tokenizer.bflow import BFlowConfig, BFlowTokenizer
from tokenizer.datamodule import FeatureDataModule
from tokenizer.fidelity import fidelity, normalize_features
from tokenizer.module import BFlowModule

__all__ = [
    "BFlowConfig",
    "BFlowModule",
    "BFlowTokenizer",
    "CodecTokenizer",
    "FeatureDataModule",
    "FrameDropTokenizer",
    "FrameTokens",
    "TokenizedVideo",
    "UniformTokenizer",
    "VideoLLMOnlineTokenizer",
    "VideoTokenizer",
    "fidelity",
    "normalize_features",
]
