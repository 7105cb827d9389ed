"""``mmduplex serve``: a web page where a video plays while the model comments on it live and answers typed
questions (:mod:`mmduplex.serve.app`: routes and sockets; :mod:`mmduplex.serve.live`: one viewer's stream through the
streaming loop; :mod:`mmduplex.serve.files`: the videos it may show)."""
