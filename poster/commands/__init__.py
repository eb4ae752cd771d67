"""One module per ``poster`` sub-command: ``add_parser(subparsers)`` + ``run(args)``."""
