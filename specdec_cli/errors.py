"""Errors that the CLI turns into a one-line message and an exit code (README, "Usage": exit
codes), and how the library's messages name an option.

The library's messages and warnings name the option a user would change by its library
name (an EngineConfig, DraftSettings or SamplingParams field, a `generate()` argument, a
`session.RunOptions` field): `option("n_ctx")`. A front end that spells its options
otherwise says so once, at start-up (`name_options`): the CLI maps them to its flags, so that
its users read "use a larger --ctx" where a library user reads "use a larger n_ctx".
"""

_OPTION_NAMES: dict[str, str] = {}


def name_options(names: dict[str, str]) -> None:
    """How this front end spells the library's options in messages: {"n_ctx": "--ctx", ...}."""
    _OPTION_NAMES.update(names)


def option(name: str) -> str:
    """An option's name as the user gave it: the front end's spelling, else the library's."""
    return _OPTION_NAMES.get(name, name)


class SpecdecError(Exception):
    """The work failed at run time: model failed to load, download failed, context overflow."""

    exit_code = 1


class UsageError(SpecdecError):
    """Bad option value, unknown model alias, empty prompt."""

    exit_code = 2
