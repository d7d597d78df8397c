"""The Guard protocol and the ordered chain that runs guards over an Exchange."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from guardproxy.guards.exchange import Exchange, Reply
from guardproxy.guards.features import FeatureReader
from guardproxy.payloads.binary_bodies import BinaryReads
from guardproxy.payloads.chatstream import TermScanner
from guardproxy.payloads.errors import PayloadError
from guardproxy.policy.models import OnError
from guardproxy.transport import RequestError

log = logging.getLogger("guardproxy.guards")


class Guard(Protocol):
    """A small object with a request hook and a response hook; blocking sets ex.reply.

    A guard may name the hooks that do nothing in a class attribute `idle` ("request",
    "response"): the chain then never calls them.
    """

    name: str
    on_error: OnError

    async def on_request(self, ex: Exchange) -> None:
        """Inspect or annotate the request before it goes upstream."""

    async def on_response(self, ex: Exchange) -> None:
        """Inspect or change the upstream's answer before it goes to the client."""


def _idle(guard: Guard) -> frozenset[str]:
    idle: frozenset[str] = getattr(guard, "idle", frozenset())
    return idle


class GuardChain:
    """Runs guards in the policy's order; a failure follows the guard's on_error.

    The `observer` (sampling) sees every final answer, even one a guard blocked. `binary`
    names what the policy reads of binary tensor bodies (OIP models); `terms` scans streamed
    chat answers for the label guard's terms (OpenAI models with a deny list).
    """

    __slots__ = (
        "_on_request",
        "_on_response",
        "binary",
        "errors",
        "features",
        "guards",
        "observer",
        "terms",
    )

    def __init__(
        self,
        guards: Sequence[Guard],
        observer: Guard | None = None,
        features: FeatureReader | None = None,
        binary: BinaryReads | None = None,
        terms: TermScanner | None = None,
    ) -> None:
        self.guards = tuple(guards)
        # A hook a guard names in `idle` does nothing: not awaited, a coroutine less each.
        self._on_request = tuple(g for g in self.guards if "request" not in _idle(g))
        self._on_response = tuple(g for g in self.guards if "response" not in _idle(g))
        self.observer = observer
        self.features = features
        self.binary = binary
        self.terms = terms
        self.errors: dict[str, int] = {}

    async def on_request(self, ex: Exchange) -> None:
        """Run each guard's request hook until one answers instead of the upstream."""
        for guard in self._on_request:
            try:
                await guard.on_request(ex)
            except RequestError:  # the client's request refused (too many rows): not a failure
                raise
            except Exception as exc:  # a guard never takes the proxy down
                self._failed(guard, ex, exc)
                ex.request_errors += 1
            if ex.reply is not None:
                return

    async def on_response(self, ex: Exchange) -> None:
        """Run each guard's response hook until one replaces the answer, then the observer."""
        await self.check_response(ex)
        await self.observe(ex)

    async def check_response(self, ex: Exchange) -> None:
        """Run each guard's response hook until one replaces the answer (no observer yet)."""
        for guard in self._on_response:
            if ex.reply is not None:
                break
            try:
                await guard.on_response(ex)
            except RequestError:
                raise
            except Exception as exc:  # a guard never takes the proxy down
                self._failed(guard, ex, exc)

    def failed(self, name: str, on_error: OnError, ex: Exchange, why: str) -> None:
        """A guard that could not check a streamed answer: counted, and fail_closed answers."""
        self.errors[name] = self.errors.get(name, 0) + 1
        ex.errors.append(f"{name}: {why}")
        if on_error == "fail_closed":
            ex.reply = Reply(502, f"guard {name} could not check the answer: {why}")

    async def observe(self, ex: Exchange) -> None:
        """Show the final answer to the observer, including answers a guard replaced."""
        if self.observer is None:
            return
        try:
            await self.observer.on_response(ex)
        except Exception as exc:  # a guard never takes the proxy down
            self._failed(self.observer, ex, exc)

    def _failed(self, guard: Guard, ex: Exchange, exc: Exception) -> None:
        self.errors[guard.name] = self.errors.get(guard.name, 0) + 1
        ex.errors.append(f"{guard.name}: {exc}")
        readable = isinstance(exc, PayloadError)
        if not isinstance(exc, PayloadError | ValueError | KeyError | IndexError | TypeError):
            log.exception("guard %s failed on %s", guard.name, ex.request_id)
        if guard.on_error == "fail_closed":
            # A payload problem is ours to describe; any other exception's text stays in the log.
            why = str(exc) if readable else "internal error"
            ex.reply = Reply(502, f"guard {guard.name} could not check the answer: {why}")
