"""Data: timed transcripts (LiveCC, moshi-finetune), the synthetic commentary data set, and sample videos."""

from mmduplex.data.samples import sample_videos
from mmduplex.data.synthetic import (
    ACTIONS,
    COLOURS,
    SHAPES,
    Event,
    ShapeTrack,
    SyntheticConfig,
    SyntheticDataset,
    VideoSpec,
    generate_dataset,
    load_events,
    make_motion_video,
    plan_video,
    render_video,
    vocabulary,
)
from mmduplex.data.transcripts import (
    OVERLAP_TOLERANCE_S,
    TimedClip,
    Word,
    livecc_record,
    load_livecc_jsonl,
    load_moshi_alignments,
)

__all__ = [
    "ACTIONS",
    "COLOURS",
    "OVERLAP_TOLERANCE_S",
    "SHAPES",
    "Event",
    "ShapeTrack",
    "SyntheticConfig",
    "SyntheticDataset",
    "TimedClip",
    "VideoSpec",
    "Word",
    "generate_dataset",
    "livecc_record",
    "load_events",
    "load_livecc_jsonl",
    "load_moshi_alignments",
    "make_motion_video",
    "plan_video",
    "render_video",
    "sample_videos",
    "vocabulary",
]
