"""The one error a dataset problem raises."""

from search_space.errors import ShuffleNASError


class DataError(ShuffleNASError):
    """A dataset that is missing, corrupt, or unknown: the message names the path and what was expected."""
