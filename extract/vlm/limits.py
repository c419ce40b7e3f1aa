"""Calling a remote model politely: a concurrency limit shared by every process on the machine, and
retries (tenacity) with exponential backoff (and jitter) on rate limits (429), server errors (5xx)
and timeouts."""
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


class _Classified(Exception):
    """An exception of the call with what ``classify`` said about it (asked once per failure)."""

    def __init__(self, exc: BaseException, retryable: bool, hint: float | None, text: str):
        super().__init__(text)
        self.exc, self.retryable, self.hint, self.text = exc, retryable, hint, text


class _Backoff:
    """tenacity wait: ``backoff * 2**(attempt-1)`` capped at ``max_backoff``, times a +-25 % jitter;
    the server's hint (capped) when it is longer."""

    def __init__(self, backoff: float, max_backoff: float, rng: random.Random):
        import tenacity

        self.exponential = tenacity.wait_exponential(multiplier=backoff, exp_base=2, max=max_backoff)
        self.max_backoff = max_backoff
        self.rng = rng

    def __call__(self, retry_state) -> float:
        wait = self.exponential(retry_state) * (0.75 + 0.5 * self.rng.random())
        hint = getattr(retry_state.outcome.exception(), "hint", None)
        if hint:
            wait = max(wait, min(hint, self.max_backoff))
        return wait


def with_retries(call, classify, retries: int = 5, backoff: float = 2.0, max_backoff: float = 60.0,
                 sleep=time.sleep, rng: random.Random | None = None):
    """Run ``call()`` with tenacity; on an exception, ``classify(exc)`` -> (retryable, wait hint in s
    or None, text).

    Retries a retryable error up to ``retries`` times, waiting ``backoff * 2**attempt`` (capped,
    with +-25 % jitter), or the server's hint when larger. Returns (result, attempts). Raises
    GiveUp with the last error's text.
    """
    import tenacity

    def attempt():
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - classify decides
            raise _Classified(exc, *classify(exc)) from exc

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(max(0, int(retries)) + 1),
        wait=_Backoff(backoff, max_backoff, rng or random.Random()),
        retry=tenacity.retry_if_exception(lambda e: isinstance(e, _Classified) and e.retryable),
        sleep=sleep, reraise=True)
    attempts = 0
    try:
        for trial in retrying:
            with trial:
                attempts = trial.retry_state.attempt_number
                result = attempt()
    except _Classified as failed:
        if not failed.retryable:
            raise GiveUp(failed.text) from failed.exc
        raise GiveUp(f"{failed.text} (gave up after {attempts} attempts)") from failed.exc
    return result, attempts
