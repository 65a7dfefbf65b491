"""The one exception type for errors a user can cause and fix."""


class R2GError(Exception):
    """A user-fixable problem. The message names the file / field / flag and says what to do.

    The CLI prints it as one red line and exits non-zero, never with a traceback.
    """
