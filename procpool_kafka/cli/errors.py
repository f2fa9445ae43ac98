"""The command line's own error: a usage mistake, reported as one line with exit code 2."""


class UsageError(Exception):
    """A usage error reported as one line with exit code 2."""
