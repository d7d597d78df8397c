"""Counters of upstream calls in one time window, cheap enough to update inline."""

from __future__ import annotations

ERROR_RATE = "upstream.error_rate"
SLOW_CALL_RATE = "upstream.slow_call_rate"
CONSECUTIVE_5XX = "upstream.consecutive_5xx"


class UpstreamWindow:
    """Calls, errors and slow calls since the window started; rates need min_calls calls."""

    __slots__ = ("calls", "errors", "max_run", "min_calls", "run", "slow", "slow_call", "started")

    def __init__(self, slow_call: float, started: float, min_calls: int = 1) -> None:
        self.slow_call = slow_call
        self.min_calls = min_calls
        self.run = 0
        self.reset(started)

    def reset(self, started: float) -> None:
        """Start a new window; the current run of failures carries over."""
        self.started = started
        self.calls = self.errors = self.slow = 0
        self.max_run = self.run

    def record(self, status: int | None, seconds: float) -> None:
        """Count one upstream call; None means a connect error or timeout."""
        self.calls += 1
        if status is None or status >= 500:
            self.errors += 1
            self.run += 1
            self.max_run = max(self.max_run, self.run)
        else:
            self.run = 0
        if status is None or seconds > self.slow_call:
            self.slow += 1

    def values(self) -> dict[str, float]:
        """The window's monitor values; rates only over at least min_calls calls.

        A handful of calls in a quiet window says little about the model, and would let a
        few clients' bad requests open the breaker for everyone.
        """
        out: dict[str, float] = {CONSECUTIVE_5XX: float(self.max_run)}
        if self.calls and self.calls >= self.min_calls:
            out[ERROR_RATE] = self.errors / self.calls
            out[SLOW_CALL_RATE] = self.slow / self.calls
        return out
