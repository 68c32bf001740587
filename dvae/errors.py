"""Errors the command line reports as one clear line (no traceback unless --debug)."""


class DvaeError(Exception):
    """Base of the errors a user can fix: bad data, a bad run directory, a bad flag."""


class DataError(DvaeError, ValueError):
    """Invalid input data; the message names the file and where (split, sequence, step, field)."""


class RunDirError(DvaeError):
    """A run directory that is missing, incomplete or inconsistent."""


class DistributedError(DvaeError, RuntimeError):
    """A data-parallel run lost a process: a collective failed or timed out (another rank failed or hung)."""
