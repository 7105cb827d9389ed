"""Inference: the streaming session (one model step per tick) and the one streaming loop every caller uses."""
