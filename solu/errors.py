"""The one exception type for a user's mistake: the CLI prints its message as one line
and exits non-zero, without a stack trace."""


class UserError(Exception):
    pass
