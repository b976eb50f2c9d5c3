"""The error types of spr_jax: a mistake a user can fix (a bad config value, missing data, a workdir of
another run, a damaged checkpoint) and a run stopped on purpose. launch.py prints either as one line (plus
an optional hint line), without a traceback; any other exception is a bug and keeps its traceback.

This module imports nothing of spr_jax, so every module can raise these."""


class UserError(Exception):
    """A mistake the user can fix; the message says what is wrong and what to do.

    `hint`, optional, is a second line with a suggestion (e.g. "did you mean ...")."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint


class ConfigError(UserError, ValueError):
    """A config value that cannot work; the message says what to change."""


class RunStopped(Exception):
    """A run stopped on purpose before its end, its work so far kept (launch.py: one line, its exit status).

    Raised for a signal (SIGINT, SIGTERM: `exit_status` 128 + the signal's number, as shells report it) and
    for a run that diverged (`exit_status` 3), after the last good checkpoint has been written."""

    def __init__(self, message: str, hint: str = "", exit_status: int = 1):
        super().__init__(message)
        self.hint = hint
        self.exit_status = exit_status


class Diverged(RunStopped):
    """Training produced a non-finite or exploding value; nothing non-finite was written."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message, hint, exit_status=3)


def first_line(e: Exception) -> str:
    """'TypeName: first line of the message', for one-line errors that quote a plug-in's exception."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"
