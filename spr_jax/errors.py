"""The one error type for mistakes a user can fix (a bad config value, missing data, a workdir of another
run, a damaged checkpoint). launch.py prints its message as one line (plus an optional hint line) and
exits with status 2, without a traceback; any other exception is a bug and keeps its traceback."""


class UserError(Exception):
    """A mistake the user can fix; the message says what is wrong and what to do.

    `hint`, optional, is a second line with a suggestion (e.g. "did you mean ...")."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint
