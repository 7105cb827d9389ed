"""One module per ``mmduplex`` subcommand (``HELP``, ``add_arguments(parser)``, ``run(args) -> int``)."""
