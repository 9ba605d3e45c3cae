"""The one exception type that means "the user asked for something we cannot do".

The CLI turns a :class:`UserError` into one line on stderr and a non-zero exit code, with no
traceback; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input (missing file, bad value, wrong dataset); the message says the fix."""


def first_line(err: BaseException) -> str:
    """The first line of a library's error (at most 200 characters), to quote inside a UserError."""
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__
