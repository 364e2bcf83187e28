"""Errors the command line turns into one-line messages (no traceback unless --debug)."""


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
