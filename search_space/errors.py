"""The one exception family every layer raises for bad input.

The CLI turns any :class:`ShuffleNASError` into a one-line message and exit
status 2; anything else is a bug and keeps its traceback.
"""


class ShuffleNASError(ValueError):
    """Bad input a user can fix: the message names the field and what is allowed."""


class ArchitectureError(ShuffleNASError):
    """An Architecture description that cannot be built."""


class SpaceError(ShuffleNASError):
    """A search-space description that is malformed or can produce an invalid network."""


class FileFormatError(ShuffleNASError):
    """A file that is missing, unreadable or not in the expected format."""
