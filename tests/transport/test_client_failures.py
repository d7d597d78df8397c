"""The pool against upstreams that misbehave: closes, resets, stalls, garbage, the retry rule."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest

from guardproxy.transport import Pool, PoolConfig, UpstreamError

from .support import eventually, raw_upstream, read_request

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def answer_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A well-behaved keep-alive upstream."""
    while True:
        await read_request(reader)
        writer.write(OK)


async def closes_when_reused(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers one request, then closes as the next one arrives: the race at its worst."""
    await read_request(reader)
    writer.write(OK)
    await reader.read(1)


async def closes_after_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers, then closes at once without saying `Connection: close` (uvicorn after a 500)."""
    await read_request(reader)
    writer.write(OK)


@pytest.fixture
async def refused_port() -> int:
    """A port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_refused_connection_is_a_502(refused_port: int) -> None:
    pool = Pool("127.0.0.1", refused_port)
    with pytest.raises(UpstreamError) as caught:
        await pool.request(b"GET", b"/", [])
    assert (caught.value.status, caught.value.kind) == (502, "refused")
    assert caught.value.message.startswith("upstream unreachable")
    assert pool.status()["errors"] == {"refused": 1}
    assert pool.status()["keys"] == {}


async def test_an_upstream_that_never_accepts_is_a_connect_timeout() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)  # never accepted: once the queue is full, handshakes go unanswered
        port = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(4)]
        for filler in fillers:
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
        pool = Pool("127.0.0.1", port, PoolConfig(connect_timeout=0.2))
        with pytest.raises(UpstreamError) as caught:
            await pool.request(b"GET", b"/", [])
        for filler in fillers:
            filler.close()
    assert (caught.value.status, caught.value.kind) == (504, "timeout_connect")
    assert pool.status()["errors"] == {"timeout_connect": 1}


async def test_host_names_are_resolved(refused_port: int) -> None:
    async with raw_upstream(answer_forever) as port:
        pool = Pool("localhost", port)
        response = await pool.request(b"GET", b"/", [])
        assert await response.read() == b"ok"
        await pool.close()


async def test_a_reused_connection_closed_before_answering_is_retried_once_fresh() -> None:
    async with raw_upstream(closes_when_reused) as port:
        pool = Pool("127.0.0.1", port)
        for body in (None, b"payload", b"x" * 100_000):
            response = await pool.request(b"POST", b"/", [], body)
            assert await response.read() == b"ok"
        status = pool.status()
        assert (status["connects"], status["reused"], status["retried"]) == (3, 2, 2)
        assert status["errors"] == {}
        await pool.close()


async def test_a_streamed_body_is_never_retried() -> None:
    async def parts() -> AsyncIterator[bytes]:
        yield b"not replayable"

    async with raw_upstream(closes_when_reused) as port:
        pool = Pool("127.0.0.1", port)
        assert await (await pool.request(b"GET", b"/", [])).read() == b"ok"
        with pytest.raises(UpstreamError) as caught:
            await pool.request(b"POST", b"/", [], parts())
        assert (caught.value.status, caught.value.retryable) == (502, True)
        assert pool.status()["retried"] == 0
        await pool.close()


async def test_a_fresh_connection_closed_before_answering_is_not_retried() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with raw_upstream(hang_up) as port:
        pool = Pool("127.0.0.1", port)
        with pytest.raises(UpstreamError) as caught:
            await pool.request(b"GET", b"/", [])
        assert (caught.value.status, caught.value.kind, caught.value.retryable) == (
            502,
            "closed",
            False,
        )
        assert pool.status()["retried"] == 0
        await pool.close()


async def test_an_idle_connection_the_upstream_closed_is_dropped_from_the_pool() -> None:
    async with raw_upstream(closes_after_answer) as port:
        pool = Pool("127.0.0.1", port)
        assert await (await pool.request(b"GET", b"/", [])).read() == b"ok"
        await eventually(lambda: pool.status()["open"] == 0)
        assert pool.status()["idle_closed"] == 1
        assert await (await pool.request(b"GET", b"/", [])).read() == b"ok"
        assert pool.status()["retried"] == 0
        await pool.close()


async def test_a_stalled_upstream_is_a_504() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.Event().wait()

    async with raw_upstream(stall) as port:
        pool = Pool("127.0.0.1", port, PoolConfig(read_timeout=0.2))
        with pytest.raises(UpstreamError) as caught:
            await pool.request(b"GET", b"/", [])
        assert (caught.value.status, caught.value.kind) == (504, "timeout_read")
        assert caught.value.message == "upstream timed out"
        await pool.close()


async def test_a_body_that_trickles_past_the_total_timeout_is_a_504() -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(1000):
            writer.write(b"x")  # each byte within the read timeout
            await asyncio.sleep(0.01)

    async with raw_upstream(trickle) as port:
        pool = Pool("127.0.0.1", port, PoolConfig(read_timeout=1.0, total_timeout=0.3))
        response = await pool.request(b"GET", b"/", [])
        with pytest.raises(UpstreamError) as caught:
            await response.read()
        assert (caught.value.status, caught.value.kind) == (504, "timeout_total")
        assert pool.status()["errors"] == {"timeout_total": 1}
        await pool.close()


async def test_reset_mid_answer_fails_the_body() -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
        await writer.drain()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()

    async with raw_upstream(reset) as port:
        pool = Pool("127.0.0.1", port)
        response = await pool.request(b"GET", b"/", [])
        with pytest.raises(UpstreamError) as caught:
            await response.read()
        assert (caught.value.status, caught.value.kind) == (502, "reset")
        await pool.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nok",
    ],
    ids=["cl-and-te", "two-cl", "not-http", "upgrade", "huge-head", "gzip-coding", "identity"],
)
async def test_malformed_answers_are_a_502(answer: bytes) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)
        await reader.read()

    async with raw_upstream(garbage) as port:
        pool = Pool("127.0.0.1", port)
        with pytest.raises(UpstreamError) as caught:
            await pool.request(b"GET", b"/", [])
        assert (caught.value.status, caught.value.kind) == (502, "protocol")
        assert pool.status()["errors"] == {"protocol": 1}
        await pool.close()


async def test_interim_answers_skipped_close_delimited_body_ends_at_close() -> None:
    async def old_style(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil ")
        await writer.drain()
        writer.write(b"the end")

    async with raw_upstream(old_style) as port:
        pool = Pool("127.0.0.1", port)
        response = await pool.request(b"GET", b"/", [])
        assert (response.status, response.headers.get(b"content-type")) == (200, b"text/plain")
        assert await response.read() == b"until the end"
        await eventually(lambda: pool.status()["open"] == 0)  # never reused
        assert pool.status()["errors"] == {}
        await pool.close()


async def test_connection_close_from_the_upstream_is_honoured() -> None:
    async def closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
        await reader.read()

    async with raw_upstream(closing) as port:
        pool = Pool("127.0.0.1", port)
        assert await (await pool.request(b"GET", b"/", [])).read() == b"ok"
        await eventually(lambda: pool.status()["open"] == 0)
        assert pool.status()["reused"] == 0
        await pool.close()


async def test_bytes_sent_by_an_idle_upstream_close_the_connection() -> None:
    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(OK)  # an answer nobody asked for
        await reader.read()

    async with raw_upstream(chatty) as port:
        pool = Pool("127.0.0.1", port)
        assert await (await pool.request(b"GET", b"/", [])).read() == b"ok"
        await eventually(lambda: pool.status()["open"] == 0)
        await pool.close()


async def test_idle_connections_beyond_max_idle_are_closed() -> None:
    async with raw_upstream(answer_forever) as port:
        pool = Pool("127.0.0.1", port, PoolConfig(max_idle=1))
        answers = await asyncio.gather(*(pool.request(b"GET", b"/", []) for _ in range(3)))
        assert [await a.read() for a in answers] == [b"ok"] * 3
        await eventually(lambda: pool.status()["open"] == 1)
        assert (pool.status()["connects"], pool.status()["idle"]) == (3, 1)
        await pool.close()


async def test_idle_connections_expire() -> None:
    async with raw_upstream(answer_forever) as port:
        pool = Pool("127.0.0.1", port, PoolConfig(idle_timeout=0.1))
        assert await (await pool.request(b"GET", b"/", [])).read() == b"ok"
        assert pool.status()["idle"] == 1
        await eventually(lambda: pool.status()["open"] == 0)
        assert pool.status()["idle_closed"] == 1
        await pool.close()


async def test_a_failing_source_body_fails_the_request_with_its_own_error() -> None:
    async def parts() -> AsyncIterator[bytes]:
        yield b"first"
        raise ConnectionResetError("client went away")

    async def listen(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # waits for the whole body, which never comes

    async with raw_upstream(listen) as port:
        pool = Pool("127.0.0.1", port)
        with pytest.raises(ConnectionResetError, match="client went away"):
            await pool.request(b"POST", b"/", [], parts())
        assert pool.status()["errors"] == {}
        assert pool.status()["keys"] == {}
        await pool.close()


LATE = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED"


@pytest.mark.parametrize(
    ("method", "head"),
    [
        (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(LATE)),
        (b"GET", b"HTTP/1.1 204 No Content\r\nContent-Length: %d\r\n\r\n" % len(LATE)),
        (b"GET", b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n"),
    ],
    ids=["head", "204", "304"],
)
async def test_a_body_declared_where_none_may_follow_is_never_read_as_the_next_answer(
    method: bytes, head: bytes
) -> None:
    async def body_sent_late(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if (await read_request(reader))[0].startswith(method + b" /first"):
            writer.write(head)  # the declared body is sent, late: once the next request came
            await read_request(reader)
            writer.write(LATE)
        writer.write(OK)
        await answer_forever(reader, writer)

    async with raw_upstream(body_sent_late) as port:
        pool = Pool("127.0.0.1", port)
        await (await pool.request(method, b"/first", [])).read()
        assert await (await pool.request(b"GET", b"/second", [])).read() == b"ok"
        assert pool.status()["reused"] == 0
        await pool.close()


async def test_a_head_answer_declaring_no_body_keeps_its_connection() -> None:
    async def empty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    async with raw_upstream(empty) as port:
        pool = Pool("127.0.0.1", port)
        for _ in range(2):
            await (await pool.request(b"HEAD", b"/", [])).read()
        assert pool.status()["reused"] == 1
        await pool.close()


async def test_trailers_of_an_answer_are_not_headers_and_count_against_the_head_limit() -> None:
    async def trailing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n")
        writer.write(b"X-Late: injected\r\n\r\n")
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n")
        writer.write(b"X-Big: " + b"a" * 5000 + b"\r\n\r\n")
        await reader.read()

    async with raw_upstream(trailing) as port:
        pool = Pool("127.0.0.1", port, PoolConfig(max_head_size=4096))
        response = await pool.request(b"GET", b"/", [])
        assert await response.read() == b"ok"
        assert response.headers.get(b"x-late") is None
        assert [name for name, _ in response.headers] == [b"Transfer-Encoding"]
        response = await pool.request(b"GET", b"/", [])
        with pytest.raises(UpstreamError) as caught:
            await response.read()
        assert caught.value.kind == "protocol"
        await pool.close()
