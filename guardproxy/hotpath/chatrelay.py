"""A guarded OpenAI chat stream: events forwarded as they complete, the label terms scanned.

The upstream's head goes to the client at once; each chunk goes through `ChatStreamGuard`,
and only the events it completes are forwarded, so nothing waits longer than its own event,
unless a denied term ends its text: then until what follows shows whether it is a word.
A denied term ends the stream: the events before the one its term ended in are
forwarded, that event and the rest are not, and the client gets `error_events` (an
OpenAI-style error event, then `data: [DONE]`). An event that cannot be read follows the
guard's `on_error`: fail_open forwards it unread and reads on, fail_closed ends the stream
with an error event; a stream that cannot be read at all (content-encoded, an event over
`max_event`) is forwarded unread with fail_open. An event the upstream leaves without its
blank line is scanned at the end, and withheld on a deny. The text of every choice (up to
the sampling policy's `max_body_bytes` characters) becomes the exchange's stream record for
its sample.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from typing import Any, cast

from guardproxy.guards.base import GuardChain
from guardproxy.guards.exchange import Exchange, Reply
from guardproxy.hotpath.replies import ProxyCounts
from guardproxy.payloads.chatstream import ChatStreamGuard, Scan
from guardproxy.payloads.errors import MAX_ROWS
from guardproxy.payloads.sse import SSEError
from guardproxy.policy.models import LabelsSpec, OnError
from guardproxy.transport import (
    ClientDisconnected,
    HeaderList,
    ResponseWriter,
    UpstreamError,
    UpstreamResponse,
)

log = logging.getLogger("guardproxy.proxy")

EVENT_STREAM = b"text/event-stream"
UNREADABLE = "the streamed answer could not be checked"


class ChatRelay:
    """One streamed chat answer, relayed through the model's label terms."""

    __slots__ = ("chain", "counts", "ended", "ex", "guard", "labels", "reading", "unread_noted")

    def __init__(
        self,
        ex: Exchange,
        chain: GuardChain,
        labels: LabelsSpec,
        counts: ProxyCounts,
        max_event: int,
        max_answer: int,
        max_choices: int = MAX_ROWS,
        ndjson: bool = False,
    ) -> None:
        self.ex, self.chain, self.labels, self.counts = ex, chain, labels, counts
        # fail_open passes an event that cannot be read and reads on; fail_closed ends there.
        skip = chain.terms is None or labels.on_error == "fail_open"
        # A Messages stream is known from its request too: an error before any event was
        # read still gets its name.
        self.guard = ChatStreamGuard(
            chain.terms, max_event=max_event, max_answer=max_answer, max_choices=max_choices,
            skip_unreadable=skip, anthropic=ex.path.endswith("/messages"), ndjson=ndjson,
        )  # fmt: skip
        self.ended = "complete"
        self.reading = True  # False once the stream could not be read (fail_open): bytes pass
        self.unread_noted = False

    async def run(
        self,
        writer: ResponseWriter,
        response: UpstreamResponse,
        headers: HeaderList,
        reason: bytes | None,
    ) -> None:
        """Start the answer, forward it event by event, end it (or cut it) as the guard says."""
        self.counts.chat_streams += 1
        chunks = cast(AsyncGenerator[bytes, None], response.stream())
        try:
            writer.start(response.status, headers, reason)
            async for chunk in chunks:
                out = self._forwardable(chunk)
                if out is None:  # the stream ends here, with the guard's last word
                    writer.end(self._last_word())
                    return
                await writer.write(out)
            writer.end(self._ending())
        except UpstreamError as exc:
            # The head is gone: a reset tells the client the truth, a clean end would lie.
            self.ended = "upstream_failed"
            self.ex.status = 502
            self.ex.errors.append(f"upstream failed mid-stream: {exc.kind}")
            self.counts.aborted += 1
            log.warning("upstream failed mid-stream: %s", exc.kind)
            writer.abort()
        except ClientDisconnected:
            self.ended = "client_gone"
            raise
        except BaseException:
            self.ended = "interrupted"
            raise
        finally:
            await chunks.aclose()
            response.release()
            self.finish()

    def _forwardable(self, chunk: bytes) -> bytes | None:
        """What of the chunk may go to the client now; None when the stream must end."""
        if not self.reading:
            return chunk
        try:
            scan = self.guard.feed(chunk)
        except SSEError as exc:
            return self.unreadable(str(exc))
        self._note_unread()
        if scan.action == "deny":
            self._denied(scan)
            return None
        return self.guard.release()

    def _ending(self) -> bytes:
        """The upstream has ended: what followed its last complete event, scanned first."""
        if not self.reading:
            return b""
        try:
            scan = self.guard.end()
        except SSEError as exc:
            out = self.unreadable(str(exc))
            return self._last_word() if out is None else out
        self._note_unread()
        if scan.action == "deny":
            self._denied(scan)
            return self._last_word()
        return self.guard.rest()

    def _note_unread(self) -> None:
        """Events passed unread (fail_open): the first one counts and fails the guard once."""
        if self.guard.unread_events and not self.unread_noted:
            self._failed(self.guard.unread[0])
            self.unread_noted = True

    def unreadable(self, why: str) -> bytes | None:
        """A stream that cannot be read: on_error decides (fail_open: the rest passes unread,
        once a term held open at the end of what was read has counted)."""
        self._failed(why, self.labels.on_error)
        if self.ex.reply is None and (scan := self.guard.settle()).action == "deny":
            self._denied(scan)
            return None
        if self.ex.reply is not None:
            self.ended = "unreadable"
            return None
        self.ended, self.reading = "passed_unread", False
        return self.guard.rest()

    def _failed(self, why: str, on_error: OnError = "fail_open") -> None:
        """Counted, and the guard's failure recorded (a stream without terms fails open)."""
        self.counts.chat_stream_errors += 1
        terms = self.chain.terms is not None
        self.chain.failed("labels" if terms else "stream", on_error if terms else "fail_open",
                          self.ex, why)  # fmt: skip

    def _denied(self, scan: Scan) -> None:
        """A denied term: block and suppress alike end the stream (sent text cannot be masked)."""
        self.counts.chat_streams_blocked += 1
        self.ended = "blocked"
        term = (scan.term or "").casefold()
        self.ex.flags.append(f"blocked:{term}")
        details = {"action": "block", "denied": 1, "stream": True}
        self.ex.reply = Reply(self.labels.block.status, self.labels.block.message, details=details)

    def _last_word(self) -> bytes:
        reply, guard = self.ex.reply, self.guard
        if reply is None or self.ended != "blocked":
            return guard.release() + guard.error(UNREADABLE, "guard_error")
        return guard.release() + guard.error(reply.error)

    def refused(self) -> None:
        """The stream was refused before it started (a fail_closed guard): its record."""
        if self.ended == "complete":
            self.ended = "refused"
        self.finish()

    def finish(self) -> None:
        """The flags the stream raised and its record, for the sample and the observers."""
        ex, guard = self.ex, self.guard
        if guard.flags:
            self.counts.chat_streams_flagged += 1
            ex.flags.extend(f"label:{term.casefold()}" for term in sorted(guard.flags))
        ex.set_stream_record(stream_record(guard, self.ended))


def stream_record(guard: ChatStreamGuard, ended: str) -> dict[str, Any]:
    """What a sample keeps of a stream: each choice's text, and how the stream ended."""
    return {
        "stream": True,
        "choices": [
            {"index": i, "text": texts.pop("content", ""), **texts}
            for i, texts in guard.texts().items()
        ],
        "done": guard.done,
        "truncated": guard.truncated,
        "unread_events": guard.unread_events,
        "ended": ended,
    }
