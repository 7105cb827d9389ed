"""Data and I/O: video decoding and writing, the feature cache, commentary output files."""
