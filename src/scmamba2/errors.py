"""User-facing errors."""


class InputError(ValueError):
    """The input data cannot be used as given.

    The message is one paragraph that names the problem and the fix. The CLI prints it without a traceback
    and exits non-zero.
    """


class CheckpointError(ValueError):
    """A checkpoint directory is incomplete, from an incompatible version, or does not fit the model."""
