"""mmduplex: duplex video-to-text models (delayed-streams duplex LM over B-Flow video tokens)."""

__version__ = "0.1.0"
