"""The one error type a user sees: the CLI prints its message as one line and exits non-zero."""


class LucidError(Exception):
    """A problem with the user's input (a file, a row, a field, a config key, a text).

    The message names what was wrong, where, what was expected and what was found.
    """


class Unsupported(LucidError):
    """A well-formed request that this model family cannot serve (the web API answers 400)."""
