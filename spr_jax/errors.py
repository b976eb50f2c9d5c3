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

    Raised for a signal (SIGINT, SIGTERM, SIGHUP: `exit_status` 128 + the signal's number, as shells report
    it), for a run that diverged or collapsed (`exit_status` 3) and for a write the system refused
    (`exit_status` 1), its work so far kept."""

    def __init__(self, message: str, hint: str = "", exit_status: int = 1):
        super().__init__(message)
        self.hint = hint
        self.exit_status = exit_status


class Diverged(RunStopped):
    """Training diverged or collapsed (exit status 3; README, "What a run guarantees").

    Either it produced a non-finite value and stopped there, nothing non-finite written (`result` None), or
    it went to its end with exploding losses or an accuracy at chance: its files are written and `result`
    holds what it wrote (a run's summary.json dict, whose "diverged" entry has this message and hint; or a
    comparison's rows, spr_jax.comparison.Comparison)."""

    def __init__(self, message: str, hint: str = "", result=None):
        super().__init__(message, hint, exit_status=3)
        self.result = result


class WriteFailed(RunStopped):
    """A write the system refused (a full disk, a quota, a read-only filesystem: spr_jax/storage.py), the path
    named; exit status 1. The run's work up to its last complete checkpoint is kept: fix the cause and run the
    same command to resume."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message, hint, exit_status=1)


def first_line(e: Exception) -> str:
    """'TypeName: first line of the message', for one-line errors that quote a plug-in's exception."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"
