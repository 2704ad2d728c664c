"""The one exception for a user's mistake: the command line prints its message, no traceback."""


class UserError(Exception):
    """Bad input (a file, a setting, a path): the message names it and says what is wrong."""
