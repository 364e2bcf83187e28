"""Errors the command line turns into one-line messages (no traceback unless --debug)."""

import errno


class AullmError(Exception):
    """Base of every expected failure; ``str(err)`` is one line naming what is wrong and where."""


class DataError(AullmError, ValueError):
    """Bad dataset input: a missing folder, a sheet with wrong columns, an unreadable frame."""


class CacheError(AullmError):
    """An HDF5 cache that is truncated, altered, or built with other parameters."""


class CheckpointError(AullmError):
    """A checkpoint whose files are missing or do not match their manifest."""


class ConfigError(AullmError, ValueError):
    """A configuration or search space that does not validate."""


_OS_HINTS = {
    errno.EROFS: " (a read-only file system: give a writable folder)",
    errno.EACCES: " (no permission to write there: give a writable folder)",
    errno.EPERM: " (not permitted: an immutable file or a folder of another user?)",
    errno.ENOSPC: " (the disk is full: free some space or give another folder)",
}


def one_line(err: BaseException, *, limit: int = 300) -> str:
    """The one line the user sees for ``err``: what is wrong and where, no traceback.

    A pydantic ``ValidationError`` gives its first error's field and message; a ``FileNotFoundError`` its
    file; an error wrapping another (Ray's ``RayTaskError``/``TuneError`` keep the worker's exception as
    ``cause``) the wrapped one; a message holding a traceback its last line (where Python puts the
    exception); any other message its first line. Whitespace is collapsed and the line cut at ``limit``.
    """
    from pydantic import ValidationError

    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException) and cause is not err:
        return one_line(cause, limit=limit)
    if isinstance(err, ValidationError):
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "value"
        message = str(first["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        text = f"invalid configuration: {where}: {message}"
    elif isinstance(err, FileNotFoundError) and err.filename:
        text = f"{err.filename}: no such file or directory"
    elif isinstance(err, OSError) and err.filename:
        text = f"{err.filename}: {err.strerror or type(err).__name__}{_OS_HINTS.get(err.errno or 0, '')}"
    else:
        lines = [line for line in str(err).splitlines() if line.strip()]
        if not lines:
            return type(err).__name__
        text = lines[-1] if "Traceback (most recent call last)" in str(err) else lines[0]
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
