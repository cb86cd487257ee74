"""The one exception type for bad input.

Anything the user can get wrong (a flag, a path, a corrupt file) raises `BadInput` with a
single line that names the flag or file and the problem. The command-line front end
(`tinystories.cli`) prints that line to stderr and exits with status 2, without a traceback.
"""


class BadInput(Exception):
    """A user-facing error: str(error) is the one line shown to the user."""
