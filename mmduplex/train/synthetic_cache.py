"""The synthetic set plus its frozen-CLIP feature cache, built (or completed) on first use.

One function shared by the tokenizer and duplex data modules and by ``mmduplex demo``. Both steps are resumable:
:func:`~mmduplex.data.synthetic.generate_dataset` reuses a complete data set with the same settings, and
:func:`~mmduplex.train.features.extract_features` skips videos already in the cache, so a run killed half-way is
completed, never taken as done.
"""

from __future__ import annotations

import os
from pathlib import Path

from mmduplex.data.synthetic import MANIFEST, SyntheticConfig, SyntheticDataset, generate_dataset
from mmduplex.errors import CacheError


def prepare_synthetic_cache(
    synthetic_dir: str | os.PathLike,
    cache_dir: str | os.PathLike,
    config: SyntheticConfig | None = None,
    encoder: str = "efficientnet-lite0",
    fps: float = 2.0,
    reuse_existing: bool = False,
    processes: int = 1,
) -> SyntheticDataset:
    """Generate the synthetic set in ``synthetic_dir`` and encode every video into ``cache_dir``.

    Args:
        synthetic_dir: the data set folder.
        cache_dir: the feature cache folder.
        config: the data set's settings (``None``: the generator's defaults).
        encoder: encoder spec of the cache.
        fps: sampling rate of the cache.
        reuse_existing: take a complete data set already in ``synthetic_dir`` as it is, whatever its settings (the
            data modules: a data set made by ``mmduplex demo`` is used, not regenerated); otherwise a data set with
            other settings is regenerated.
        processes: rendering processes of a new data set and encoder processes (see
            :func:`~mmduplex.train.features.extract_features`).

    Raises:
        CacheError: a video could not be encoded (the others are in the cache).
    """
    from mmduplex.train.features import extract_features

    if reuse_existing and (Path(synthetic_dir) / MANIFEST).is_file():
        dataset = SyntheticDataset(synthetic_dir)
    else:
        dataset = generate_dataset(synthetic_dir, config, processes=processes)
    report = extract_features(dataset.videos(), cache_dir, encoder=encoder, fps=fps, processes=processes)
    if report.failed:
        raise CacheError(cache_dir, f"feature extraction failed for {sorted(report.failed)}")
    return dataset
