"""B-Flow video tokenizer: frozen CLIP patch features -> keyframe / flow tokens, baselines, fidelity, training."""

from mmduplex.tokenizer.base import FrameTokens, TokenizedVideo, VideoTokenizer
from mmduplex.tokenizer.baselines import (
    CodecTokenizer,
    FrameDropTokenizer,
    NoVideoTokenizer,
    SparsePatchTokenizer,
    UniformTokenizer,
    VideoLLMOnlineTokenizer,
)
from mmduplex.tokenizer.bflow import BFlowConfig, BFlowTokenizer
from mmduplex.tokenizer.encoders.factory import FrozenCLIP, FrozenImageEncoder, create_encoder
from mmduplex.tokenizer.fidelity import fidelity, normalize_features

__all__ = [
    "BFlowConfig",
    "BFlowTokenizer",
    "CodecTokenizer",
    "FrameDropTokenizer",
    "FrameTokens",
    "FrozenCLIP",
    "FrozenImageEncoder",
    "TokenizedVideo",
    "NoVideoTokenizer",
    "SparsePatchTokenizer",
    "UniformTokenizer",
    "VideoLLMOnlineTokenizer",
    "VideoTokenizer",
    "create_encoder",
    "fidelity",
    "normalize_features",
]
