"""The one exception type for mistakes a user can make (bad config, missing file, wrong policy)."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input; the CLI prints the message and exits with code 2, no traceback.

    The message must name the field or file at fault and say what was expected.
    """


def first_line(exc: BaseException) -> str:
    """`Type: first line of its message`: a failure in a user's model named in one line, without a traceback."""
    said = str(exc).splitlines()
    return f"{type(exc).__name__}: {said[0] if said else ''}"
