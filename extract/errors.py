"""The base of every user error: bad input or a refused output. Its message names the file and the
cause; the CLI prints it as one line with no traceback (extract/cli_errors.py)."""
from __future__ import annotations


class UserError(Exception):
    """Something the user must fix; ``str(exc)`` says what and where."""
