"""The one exception type for mistakes a user can make and fix (paths, files, overrides).

Entry points catch it and print its message as a single line with a non-zero exit, so a
user sees what to change rather than a traceback.
"""


class UserError(Exception):
    """A problem with the user's input: the message names the path or value and the fix."""


class Interrupted(UserError):
    """Training stopped on request (Ctrl-C, SIGTERM): a sweep stops too instead of moving on."""
