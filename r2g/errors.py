"""The exception type for errors a user can cause and fix."""


class R2GError(Exception):
    """A user-fixable problem. The message names the file / field / flag and says what to do.

    The CLI prints it as one red line and exits non-zero, never with a traceback.
    """


class AgreedError(R2GError):
    """An R2GError that every rank of a distributed command raises at the same point, having agreed on it
    (r2g.dist.raise_together), so none is left waiting in a collective and the process group can be closed."""
