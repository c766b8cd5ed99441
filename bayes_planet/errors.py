"""The project's own error for bad input, kept apart from bugs.

A `UsageError` says what the user gave that cannot work (a config key and its allowed values, a path, a
damaged file) in one line; the command line prints it and exits with status 2. Any other exception is a bug
or an environment fault and keeps its traceback.
"""


class UsageError(ValueError):
    """Bad input from the user: a config value, a command-line argument, a path or a file that cannot be used."""
