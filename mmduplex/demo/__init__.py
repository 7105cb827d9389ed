"""``mmduplex demo``: the whole path on the built-in synthetic set (stages, streaming and scoring, questions, pages)."""
