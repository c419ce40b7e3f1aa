"""For the click commands only: user errors of the library become one message and exit status 1."""
from __future__ import annotations

import contextlib

import click

from .errors import UserError
from .logs import setup_cli_logging


def _known() -> tuple[type[BaseException], ...]:
    from .annotator import AnnotatorError
    from .cache import CacheError

    return (UserError, CacheError, AnnotatorError, FileNotFoundError)


@contextlib.contextmanager
def user_errors(*more: type[BaseException]):
    """``with user_errors():`` around a library call: a user error is printed without a traceback, and
    the library's warnings reach the terminal (extract/logs.py)."""
    setup_cli_logging()
    try:
        yield
    except _known() + more as exc:
        raise click.ClickException(str(exc)) from None
