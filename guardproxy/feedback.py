"""POST /guardproxy/v1/feedback: delayed ground-truth labels, joined to predictions by id."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from guardproxy.bearer import Token, bearer_matches
from guardproxy.guards.exchange import dumps, loads
from guardproxy.hotpath.trust import MAX_REQUEST_ID, well_formed_id
from guardproxy.monitors.engine import FairnessEngine
from guardproxy.payloads.codec import repeats_a_key
from guardproxy.state.base import Joined, Outcome, StateError
from guardproxy.transport import BodyTooLarge, Request, ResponseWriter

MAX_ITEMS = 10_000
# Labels validated and joined per event-loop step (~7 µs each): 10,000 in one step held
# every request behind them for 75 ms.
STEP = 200
# 10,000 labels of up to ~200 bytes; a larger body would only hold the loop while it parses.
MAX_BODY = 2 * 1024 * 1024
SHOWN = 40  # characters of a rejected value an answer repeats
MALFORMED = "expected a JSON object, a JSON array, or NDJSON lines"
JSON = [(b"Content-Type", b"application/json")]
MAX_ID_LENGTH = MAX_REQUEST_ID  # as the data port keeps a client's X-Request-Id
MAX_ROW_DIGITS = 10  # a batch row's label names "<request id>:<row>"
STATUS = {
    Outcome.JOINED: "joined",
    Outcome.UNKNOWN: "unknown_id",
    Outcome.DUPLICATE: "duplicate",
    Outcome.CONTESTED: "contested",
}
TOTALS = ("joined", "unknown_id", "duplicate", "contested", "invalid")
# Parsers disagree on which member of a repeated key counts (orjson keeps the last, others the
# first): {"label": 0, "label": 1} would join 1 here and read 0 wherever else it is checked.
REPEATED = "a JSON object names a key more than once"
# Seconds a request whose labels name unknown ids waits, once, for the records of answers
# already sent to be written (the monitors gather for 10 ms, then a task writes them).
SETTLE_TIMEOUT = 1.0
Settle = Callable[[], Awaitable[None]]

log = logging.getLogger("guardproxy.feedback")


class BadBody(ValueError):
    """The body is not one object, an array, or NDJSON lines; or holds too many items."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Item:
    """One validated label."""

    request_id: str
    label: int
    observed_at: float


def parse_body(body: bytes, limit: int = MAX_ITEMS) -> tuple[list[Any], bool]:
    """The raw items of a body, one JSON object or a JSON array; or its NDJSON lines (True),
    each read by `ndjson_item` when its step comes."""
    text = body.strip()
    if not text:
        raise BadBody(f"empty body ({MALFORMED})")
    try:
        doc = loads(text)
    except ValueError:
        return ndjson_lines(text, limit), True
    items = doc if isinstance(doc, list) else [doc]
    if not isinstance(doc, list | dict):
        raise BadBody(MALFORMED)
    if len(items) > limit:
        raise BadBody(f"{len(items)} items in one request; the limit is {limit}", 413)
    if repeats_a_key(text, doc):
        raise BadBody(f"{REPEATED} (which one counts is ambiguous)")
    return items, False


def ndjson_lines(text: bytes, limit: int = MAX_ITEMS) -> list[bytes]:
    """The lines of an NDJSON body; BadBody over `limit` lines, or under two."""
    # Split at most twice the limit: millions of short lines would make millions of objects
    # before they could be counted. Whatever is left over is more items (or blank lines).
    pieces = text.split(b"\n", 2 * limit)
    lines = [line for line in pieces if line.strip()]
    if len(lines) > limit or (len(pieces) > 2 * limit and pieces[-1].strip()):
        raise BadBody(f"over {limit} items in one request; the limit is {limit}", 413)
    if len(lines) < 2:
        raise BadBody(f"malformed JSON ({MALFORMED})")
    return lines


def ndjson_item(line: bytes) -> Any:
    """The item of one NDJSON line, or `_Malformed` saying why it is none."""
    try:
        item = loads(line)
    except ValueError as exc:
        return _Malformed(str(exc))
    return _Malformed(REPEATED) if repeats_a_key(line, item) else item


@dataclass(frozen=True, slots=True)
class _Malformed:
    reason: str


def validate(raw: Any, now: float) -> Item | str:
    """An Item, or the reason the raw item is invalid."""
    if isinstance(raw, _Malformed):
        return raw.reason
    if not isinstance(raw, dict):
        return "expected an object with request_id and label"
    request_id = raw.get("request_id")
    if not isinstance(request_id, str) or not prediction_id(request_id):
        return (
            f"request_id must be 1 to {MAX_ID_LENGTH} characters of letters, digits and ._:- "
            "(a batch row: <request id>:<row>)"
        )
    label = raw.get("label")
    if label not in (0, 1) or isinstance(label, float):
        return f"label must be 0, 1, true or false, not {shown(label)}"
    observed = observed_time(raw.get("observed_at"), now)
    if observed is None:
        return f"observed_at must be ISO-8601 or epoch seconds, not {shown(raw['observed_at'])}"
    return Item(request_id, int(label), observed)


def shown(value: Any) -> str:
    """A rejected value as an answer repeats it: a short scalar in full, else its beginning
    or its kind (a client's megabytes are not sent back, nor rendered first)."""
    if isinstance(value, list | dict):
        return f"a JSON {'array' if isinstance(value, list) else 'object'}"
    text = repr(value[: SHOWN + 1] if isinstance(value, str) else value)
    return text if len(text) <= SHOWN else text[:SHOWN] + "..."


def prediction_id(value: str) -> bool:
    """Whether a label may name this id: a request id as proxied ids are kept, or a row's."""
    if well_formed_id(value):
        return True
    base, _, row = value.rpartition(":")
    digits = 0 < len(row) <= MAX_ROW_DIGITS and row.isascii() and row.isdigit()
    return digits and well_formed_id(base)


def observed_time(value: Any, now: float) -> float | None:
    """Epoch seconds of an observed_at (ISO-8601 text or a number); absent means now."""
    if value is None:
        return now
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) if value >= 0 else None
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


class FeedbackEndpoint:
    """The handler behind the data port's feedback route."""

    def __init__(
        self,
        engine: FairnessEngine,
        token: Token | str | None,
        limit: int = MAX_ITEMS,
        clock: Callable[[], float] = time.time,
        max_body: int = MAX_BODY,
        settle: Settle | None = None,
    ) -> None:
        self.token = token if isinstance(token, Token) else Token(token)
        self.engine, self.limit, self.clock = engine, limit, clock
        self.max_body, self.settle = max_body, settle
        # Every request's steps take turns, one a pass of the event loop: a hundred requests
        # each taking a step in one pass held every other request for ~100 ms.
        self._turn = asyncio.Lock()
        self.counts = dict.fromkeys(
            ("requests", "rejected", "state_errors", "waited", "wait_timeouts", *TOTALS), 0
        )

    async def handle(self, request: Request, writer: ResponseWriter) -> None:
        """Join a batch of labels; per-item results in order, plus totals."""
        status, doc = await self.answer(request)
        writer.send(status, JSON, dumps(doc))

    async def answer(self, request: Request) -> tuple[int, dict[str, Any]]:
        """The status and JSON document answering one feedback request."""
        self.counts["requests"] += 1
        authorization = request.headers.get(b"authorization")
        if not bearer_matches(_text(authorization), self.token.current()):
            return self._error("a valid bearer token is required", 401)
        try:
            body = await request.read(self.max_body)
            async with self._turn_taken():
                raw, ndjson = parse_body(body, self.limit)
        except BadBody as exc:
            return self._error(str(exc), exc.status)
        except BodyTooLarge as exc:  # the connection closes after the answer: body unread
            return self._error(exc.message, 413)
        results: list[dict[str, Any]] = []
        totals = dict.fromkeys(TOTALS, 0)
        waited, readable = False, not ndjson
        for start in range(0, len(raw), STEP):
            try:
                chunk, checked, items, joined = await self._step(raw[start : start + STEP], ndjson)
                if ndjson and not readable:
                    readable = not all(isinstance(item, _Malformed) for item in chunk)
                if not waited and any(r.outcome is Outcome.UNKNOWN for r in joined):
                    waited = True
                    joined = await self._rejoin(items, joined)
            except StateError as exc:  # the steps before stay joined: a retry says duplicate
                log.warning("feedback: labels could not be stored: %s", exc)
                self.counts["state_errors"] += 1
                self._count(totals)
                return self._error("labels could not be stored: the state backend failed", 503)
            results += self._results(chunk, checked, iter(joined), totals)
        if not readable:  # not one line was JSON: nothing was joined
            return self._error(f"malformed JSON ({MALFORMED})", 400)
        self._count(totals)
        return 200, {"results": results, "totals": totals}

    def _count(self, totals: dict[str, int]) -> None:
        for status, count in totals.items():
            self.counts[status] += count

    async def _step(
        self, chunk: list[Any], ndjson: bool
    ) -> tuple[list[Any], list[Item | str], list[tuple[str, int, float]], list[Joined]]:
        """A step's items (NDJSON lines read here: 10,000 at once held the loop for ~25 ms),
        each an Item or why not, the valid ones, and how they joined."""
        async with self._turn_taken():
            if ndjson:
                chunk = [ndjson_item(line) for line in chunk]
            checked = [validate(item, self.clock()) for item in chunk]
            items = [(c.request_id, c.label, c.observed_at) for c in checked if isinstance(c, Item)]
            return chunk, checked, items, await self.engine.join(items) if items else []

    @asynccontextmanager
    async def _turn_taken(self) -> AsyncIterator[None]:
        """This request's turn, held over a pass of the loop: requests run between turns."""
        async with self._turn:
            yield
            await asyncio.sleep(0)

    async def _rejoin(
        self, items: Sequence[tuple[str, int, float]], joined: list[Joined]
    ) -> list[Joined]:
        """Unknown ids joined again once the records of the answers sent so far are written.

        A label may come back as soon as its answer: its record is written 10-20 ms later.
        An unknown id claims nothing, so joining it again cannot count it twice.
        """
        if self.settle is None:
            return joined
        self.counts["waited"] += 1
        try:
            await asyncio.wait_for(self.settle(), SETTLE_TIMEOUT)
        except TimeoutError:
            self.counts["wait_timeouts"] += 1
            return joined
        unknown = [i for i, r in enumerate(joined) if r.outcome is Outcome.UNKNOWN]
        async with self._turn_taken():
            again = await self.engine.join([items[i] for i in unknown])
        for i, result in zip(unknown, again, strict=True):
            joined[i] = result
        return joined

    def _results(
        self,
        raw: list[Any],
        checked: list[Item | str],
        joined: Iterator[Joined],
        totals: dict[str, int],
    ) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        for original, outcome in zip(raw, checked, strict=True):
            if isinstance(outcome, Item):
                result = next(joined)
                results.append({"request_id": outcome.request_id, "status": STATUS[result.outcome]})
            else:
                rid = original.get("request_id") if isinstance(original, dict) else None
                if not isinstance(rid, str) or len(rid) > MAX_ID_LENGTH + MAX_ROW_DIGITS + 1:
                    rid = None  # an answer repeats ids, not what a client put in their place
                results.append({"request_id": rid, "status": "invalid", "reason": outcome})
        for entry in results:
            totals[entry["status"]] += 1
        return results

    def _error(self, message: str, status: int) -> tuple[int, dict[str, Any]]:
        self.counts["rejected"] += 1
        return status, {"error": message}


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None
