"""Typed errors. User errors print as one line at the CLI (no traceback) and exit non-zero."""


class FedNASError(Exception):
    """Base class of every user-facing fednas error (bad config, missing data, ...)."""


class ConfigError(FedNASError, ValueError):
    """A scenario key, type or value is invalid. The message names the key."""


class DataError(FedNASError):
    """A dataset is missing, corrupt or malformed. The message says how to fix it."""


class CheckpointError(FedNASError):
    """A checkpoint or run directory does not match what is being loaded."""
