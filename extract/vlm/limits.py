"""Calling a remote model politely: a concurrency limit shared by every process on the machine, and
retries with exponential backoff (and jitter) on rate limits (429), server errors (5xx) and
timeouts."""
from __future__ import annotations

import contextlib
import os
import random
import tempfile
import time
from pathlib import Path

RETRY_STATUS = (408, 429, 500, 502, 503, 504)


class Slots:
    """At most ``n`` holders at a time across processes: ``n`` lock files, each held with flock.

    joblib workers are separate processes, so a threading semaphore would not limit them; an flock
    is released by the kernel when its holder dies, so a killed worker never leaks a slot.
    """

    def __init__(self, name: str, n: int, folder: str | os.PathLike | None = None, poll: float = 0.05):
        self.n = max(1, int(n))
        self.folder = Path(folder or Path(tempfile.gettempdir()) / "moe-emotion-slots")
        self.name = name
        self.poll = poll

    @contextlib.contextmanager
    def hold(self):
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            for i in range(self.n):
                fh = open(self.folder / f"{self.name}-{i}.lock", "a+")
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    fh.close()
                    continue
                try:
                    yield i
                finally:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
                    fh.close()
                return
            time.sleep(self.poll)


class GiveUp(Exception):
    """Retries exhausted, or an error that retrying cannot fix; the message says which."""


def with_retries(call, classify, retries: int = 5, backoff: float = 2.0, max_backoff: float = 60.0,
                 sleep=time.sleep, rng: random.Random | None = None):
    """Run ``call()``; on an exception, ``classify(exc)`` -> (retryable, wait hint in s or None, text).

    Waits ``backoff * 2**attempt`` (capped, with +-25 % jitter), or the server's hint when larger.
    Returns (result, attempts). Raises GiveUp with the last error's text.
    """
    rng = rng or random.Random()
    attempt = 0
    while True:
        try:
            return call(), attempt + 1
        except Exception as exc:  # noqa: BLE001 - classify decides
            retryable, hint, text = classify(exc)
            if not retryable:
                raise GiveUp(text) from exc
            if attempt >= retries:
                raise GiveUp(f"{text} (gave up after {attempt + 1} attempts)") from exc
            wait = min(max_backoff, backoff * (2 ** attempt)) * (0.75 + 0.5 * rng.random())
            if hint:
                wait = max(wait, min(hint, max_backoff))
            sleep(wait)
            attempt += 1
