"""The project's own exceptions. The command line prints any of them as one line and exits with status 2;
anything else is a bug and keeps its traceback."""

from __future__ import annotations


class SfsegError(Exception):
    """Base class: a problem with the user's input (a file, a value, a path), not with sfseg itself."""


class ConfigError(SfsegError, ValueError):
    """A config file or override does not fit the config schema, or a value is out of range."""


class DatasetError(SfsegError, ValueError):
    """A dataset on disk does not match what sfseg expects (layout, file contents, sizes)."""


class CheckpointError(SfsegError, ValueError):
    """A checkpoint file is missing, corrupt, of an unknown format, or disagrees with the data."""


class MethodError(SfsegError, ValueError):
    """A method composition that cannot work."""


class RunDirError(SfsegError):
    """An output location that cannot be used: not writable, of the wrong kind, or holding another run."""


class ResumeError(SfsegError):
    """A run directory that cannot be resumed."""


class ValueCheck(Exception):
    """Raised by a config's ``check()``: ``key`` (dotted, relative to that config) holds a bad value. The
    loader turns it into a :class:`ConfigError` naming the file or override that gave the value."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message
