"""User-facing errors."""


class InputError(ValueError):
    """The input data cannot be used as given.

    The message is one paragraph that names the problem and the fix. The CLI prints it without a traceback
    and exits non-zero.
    """
