"""The error raised for any checkpoint that cannot be read or written as asked."""


class CheckpointError(ValueError):
    """A checkpoint folder, file or weight does not match what was asked for.

    The message always names the file or key at fault and what was expected.
    """
