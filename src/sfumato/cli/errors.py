"""The command line's own error: a user mistake found before any model is loaded."""


class UsageError(Exception):
    """A bad argument, a missing file or a folder that is not a checkpoint.

    ``main`` prints the message on one line and exits with status 2, the
    status argparse uses for usage errors, so scripts can tell "you asked
    for something impossible" (2) from "it failed while running" (1).
    """
