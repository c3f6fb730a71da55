"""The one root error type: the CLI turns it into a one-line message and exit code 1."""


class ResearchError(Exception):
    """A user-facing error: bad input, missing thing, failed precondition."""
