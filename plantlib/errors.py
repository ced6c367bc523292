"""Exceptions for mistakes a user can fix; the CLI prints them as one line without a traceback."""


class PlantlibError(Exception):
    """A user-facing error whose message names the bad value and the fix."""


class ConfigError(PlantlibError, ValueError):
    """A configuration field holds a value that is not allowed."""


class DataError(PlantlibError):
    """The data folder, its files or the split cannot be used as they are."""


class FetchError(DataError):
    """Images could not be fetched or verified."""


class DiskFullError(PlantlibError):
    """A write ran out of space; the message names the folder and about how much the write needed."""
