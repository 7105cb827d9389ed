"""Feature normalisation and the one fidelity measure every tokenizer is scored with.

Definition (used by B-Flow, the baselines, the benchmark and ``mmduplex tokenize``): both the true patch features
and their reconstruction are normalised per patch with a LayerNorm without affine parameters (zero mean, unit
variance over the feature dimension), then fidelity is the mean over frames and patches of their cosine similarity.
Because cosine is scale invariant this is the per-patch Pearson correlation across feature channels; 1 is perfect,
0 is no linear relation. Every tokenizer works on the same normalised features internally, so its reconstruction
is already in this space and normalising it again is a no-op up to ``eps``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmduplex.errors import InputError

EPS = 1e-6


def normalize_features(x: torch.Tensor) -> torch.Tensor:
    """Per-patch LayerNorm without affine over the last dimension (``[..., D]`` -> ``[..., D]``, float32)."""
    x = x.float()
    return F.layer_norm(x, x.shape[-1:], eps=EPS)


def patch_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of normalised ``a`` and ``b`` over the last dimension (``[..., D]`` -> ``[...]``)."""
    return F.cosine_similarity(normalize_features(a), normalize_features(b), dim=-1, eps=EPS)


def fidelity_per_frame(patches: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Mean patch cosine of every frame: ``[T, P, D]`` x ``[T, P, D]`` -> ``[T]``.

    Raises:
        InputError: the shapes differ, are not ``[T, P, D]`` or hold no frame.
    """
    if patches.shape != recon.shape:
        raise InputError("recon", f"shape {tuple(recon.shape)} differs from patches {tuple(patches.shape)}")
    if patches.dim() != 3 or patches.shape[0] == 0:
        raise InputError("patches", f"expected a non-empty [T, P, D] tensor, got shape {tuple(patches.shape)}")
    return patch_cosine(patches, recon).mean(dim=-1)


def fidelity(patches: torch.Tensor, recon: torch.Tensor) -> float:
    """Mean over frames and patches of cos(true patch feature, its reconstruction), on normalised features.

    Args:
        patches: the true features at the sampling fps, ``[T, P, D]``.
        recon: the reconstruction of frame ``t`` from the tokens emitted up to ``t``, ``[T, P, D]``.
    """
    return float(fidelity_per_frame(patches.detach(), recon.detach()).mean())
