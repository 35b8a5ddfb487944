"""Errors that end the process with one clear line instead of a stack trace."""


class ConfigError(Exception):
    """Bad or missing configuration, or a database that cannot be reached: exit code 2."""

    exit_code = 2


class PrivilegeError(Exception):
    """The database role lacks a privilege a migration needs: exit code 2."""

    exit_code = 2


class CheckpointConflict(Exception):
    """Another worker moved the checkpoint under us: stop instead of overwriting its work."""


class Deposed(Exception):
    """A newer leader took over: stop deciding and applying, and become a standby again."""
