"""The project's own exception for problems a user can fix."""


class TinyGemmaError(Exception):
    """A user-fixable problem. The CLI prints it as one line (no traceback) and exits 2.

    The message says what was wrong and how to fix it, e.g.
    "data/train.bin not found: run `tinygemma prepare` first".
    Bugs still raise ordinary exceptions.
    """
