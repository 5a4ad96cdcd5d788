"""User-facing errors: the CLI prints these as one line and exits with code 2."""


class IrscreenError(Exception):
    """A problem the user can fix (bad file, missing column, mismatched model...).

    The message is a complete sentence naming what and where; the CLI prints it
    on one line without a traceback.
    """


class IrscreenWarning(UserWarning):
    """Something the user should know that does not stop the command; the CLI prints it
    as one line on stderr."""
