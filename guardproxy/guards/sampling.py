"""SamplingGuard: deterministic, group-stratified sampling of exchanges for review."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from itertools import repeat
from typing import Any

from guardproxy.guards.draws import SAMPLING, Draws
from guardproxy.guards.exchange import Exchange
from guardproxy.policy.models import OnError, SamplingSpec
from guardproxy.sampling.redact import Redactor
from guardproxy.sampling.sinks import Sample, SampleQueue

ANY = ("*",)  # the group of a request no group guard named


class SamplingGuard:
    """Samples at `rate` by a keyed hash of the request body; tops up each group per window.

    The key is secret, so no client can tell (or choose) whether its request is reviewed; the
    same body always gets the same answer, whatever request id it carries.
    """

    name = "sampling"
    on_error: OnError = "fail_open"

    def __init__(
        self,
        spec: SamplingSpec,
        queue: SampleQueue,
        version: str,
        clock: Callable[[], float] = time.monotonic,
        draws: Draws | None = None,
    ) -> None:
        self._rate = spec.rate
        self._draws = draws or Draws()
        self._minimum = spec.min_per_group
        self._max_always = spec.max_always
        self._always = 0  # exchanges sampled this window because they were odd
        self._window = spec.window
        self._queue = queue
        self._version = version
        self._clock = clock
        self.redactor = Redactor(spec.redact, spec.detectors, spec.max_body_bytes)
        self._counts: dict[str, int] = {}
        self._window_start = clock()

    async def on_request(self, ex: Exchange) -> None:
        """Nothing to do before the answer is final."""

    async def on_response(self, ex: Exchange) -> None:
        """Decide on the final answer; offer the sample without waiting."""
        rows = ex.groups
        groups = (rows if len(rows) == 1 else set(rows)) or ANY  # one row: no set to build
        self._roll_window()
        if not self.wanted(ex, groups):
            return
        ex.sampled = True
        for group in groups:
            self._counts[group] = self._counts.get(group, 0) + 1
        self._queue.offer(self._sample(ex))

    def wanted(self, ex: Exchange, groups: Collection[str]) -> bool:
        """Odd exchanges first (up to max_always a window), then by content or group minimum.

        Odd: flagged, blocked, failed or errored. A request the guards could not read is the
        client's doing, not the model's: it is sampled as any request is, or a client could
        fill the samples with unreadable ones. A client that makes the model fail could still
        force samples: hence the cap.
        """
        failed = len(ex.errors) > ex.request_errors
        if ex.flags or failed or ex.reply is not None or ex.status >= 500:
            if self._always < self._max_always:
                self._always += 1
                return True
            self._queue.always_capped += 1
        if self._rate and self._draws.uniform(ex.body, SAMPLING) < self._rate:
            return True
        return bool(self._minimum) and self._below_minimum(groups)

    def _roll_window(self) -> None:
        now = self._clock()
        if now - self._window_start >= self._window:
            self._counts.clear()
            self._always = 0
            self._window_start = now

    def _below_minimum(self, groups: Collection[str]) -> bool:
        # The smallest count of the exchange's groups, without a generator: one costs more
        # than the usual single group's lookup.
        return bool(groups) and min(map(self._counts.get, groups, repeat(0))) < self._minimum

    def _sample(self, ex: Exchange) -> Sample:
        reply = ex.reply
        status = reply.status if reply is not None else ex.status
        response: Any = ex.response_record()  # serialised by the writer, off the hot path
        if reply is not None:
            error = {"error": reply.error, "details": reply.details}
            # A stream ended by a guard: what it said until then, and why it ended.
            streamed = ex.streamed and isinstance(response, dict)
            response = {**response, **error} if streamed else error
        return Sample(
            request_id=ex.request_id,
            time=time.time(),
            region=ex.region,
            policy=self._version,
            groups=list(ex.groups),
            decisions=[v.decision for v in ex.verdicts],
            thresholds=[v.threshold for v in ex.verdicts],
            flags=list(ex.flags),
            errors=list(ex.errors),
            status=status,
            request=ex.request_record(),
            response=response,
            redactor=self.redactor,
            # Streamed text and decoded (gRPC) documents are not the bytes: size unknown.
            size=-1 if ex.streamed or ex.decoded else len(ex.body) + len(ex.response_body),
        )
