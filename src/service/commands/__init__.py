"""One module per `lab2prod` subcommand: `register(subparsers)` adds it and sets `handler`."""
