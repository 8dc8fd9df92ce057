"""The project's error types.

A `CnnlabError` is the user's to fix (a bad params value, a missing file): the CLI prints
its one-line message and exits with code 2. Any other exception is a bug in cnnlab and
keeps its traceback.
"""

USER_ERROR_EXIT_CODE = 2


class CnnlabError(Exception):
    """Bad input that the user can fix; the message is one line that says how."""


class ConfigError(CnnlabError):
    """params.yaml is missing, unreadable, or holds a key or value cnnlab does not accept."""


class DataError(CnnlabError):
    """A dataset or pipeline artifact is missing or not in the expected format."""
