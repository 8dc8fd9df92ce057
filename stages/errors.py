"""The project's error types.

A `CnnlabError` is the user's to fix (a bad params value, a missing or damaged file): the
CLI prints its one-line message and exits with code 2. An `EnvironmentFailure` is the
machine's (disk full, permission denied, read-only folder): one line, exit code 1. Any
other exception is a bug in cnnlab and keeps its traceback.
"""

from __future__ import annotations

import errno
import os

USER_ERROR_EXIT_CODE = 2
ENVIRONMENT_EXIT_CODE = 1


class CnnlabError(Exception):
    """Bad input that the user can fix; the message is one line that says how."""


class ConfigError(CnnlabError):
    """params.yaml is missing, unreadable, or holds a key or value cnnlab does not accept."""


class DataError(CnnlabError):
    """A dataset or pipeline artifact is missing or not in the expected format."""


class EnvironmentFailure(Exception):
    """The machine refused a file operation (disk full, permissions); one line, exit code 1."""


# errno -> (what happened, what to do): the operating system's refusals that no input caused.
ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: ("no space left on the disk", "free some space and run the same command again"),
    errno.EDQUOT: ("disk quota exceeded", "free some space and run the same command again"),
    errno.EFBIG: ("file too large for this file system or limit", "write to another disk"),
    errno.EACCES: ("permission denied", "make the folder writable for you (chmod/chown), then run again"),
    errno.EPERM: ("operation not permitted", "make the folder writable for you (chmod/chown), then run again"),
    errno.EROFS: ("read-only file system", "run from a writable copy of the project"),
}


def environment_failure(error: BaseException, writing: str | os.PathLike | None = None) -> EnvironmentFailure | None:
    """The one-line EnvironmentFailure for an OSError the machine caused, else None.

    `writing` names the artifact being written (the OS often names only a temporary file,
    or nothing at all, when a disk fills up); the previous version of it is left intact.
    """
    if not isinstance(error, OSError) or error.errno not in ENVIRONMENT_ERRNOS:
        return None
    what, fix = ENVIRONMENT_ERRNOS[error.errno]
    if writing is not None:
        return EnvironmentFailure(f"cannot write {writing}: {what}; {fix} (any previous {writing} "
                                  "is unchanged)")
    subject = f"cannot use {error.filename}" if error.filename else "a file operation failed"
    return EnvironmentFailure(f"{subject}: {what}; {fix}")
