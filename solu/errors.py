"""The one exception type for a user's mistake: the CLI prints its message as one line
and exits non-zero, without a stack trace."""


class UserError(Exception):
    pass


def first_line(e: BaseException) -> str:
    """An exception's message as one line for a user: its first line, or the exception's
    type where it has no message."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
