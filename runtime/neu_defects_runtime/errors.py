"""The one exception type for mistakes a user can fix: the command line prints it as one line, exit 2."""


class InputError(Exception):
    """A problem with the user's input: the message names the path or value and the fix."""
