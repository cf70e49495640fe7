"""Errors that the CLI turns into a one-line message and an exit code (README, "Usage": exit codes)."""


class SpecdecError(Exception):
    """The work failed at run time: model failed to load, download failed, context overflow."""

    exit_code = 1


class UsageError(SpecdecError):
    """Bad flag value, unknown model alias, empty prompt."""

    exit_code = 2
