"""The server's defined answers to hostile or broken clients, and its shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import json
import tracemalloc

import pytest

from guardproxy.transport import (
    BodyTooLarge,
    ClientDisconnected,
    Request,
    ResponseWriter,
    ServerConfig,
)
from guardproxy.transport.body import BodyBuffer

from .support import RawClient, eventually, serving


async def ok(request: Request, response: ResponseWriter) -> None:
    """Read the body, answer 200 with it."""
    response.send(200, [], await request.read(1 << 20))


async def refused(port: int, data: bytes) -> tuple[int, dict[str, str]]:
    """Send `data`; return the error status and JSON body, checking the close."""
    client = await RawClient.open(port)
    await client.send(data)
    answer = await client.answer()
    assert answer.header(b"connection") == b"close"
    assert answer.header(b"content-type") == b"application/json"
    assert await client.closed()
    return answer.status, json.loads(answer.body)


SMUGGLING = {
    "cl-and-te": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
    "te-and-cl": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Length: 4\r\n\r\n0\r\n\r\n",
    "two-cl": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
    "same-two-cl": b"POST / HTTP/1.1\r\nHost: h\r\n"
    b"Content-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
    "cl-list": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4, 4\r\n\r\nabcd",
    "bad-cl": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4x\r\n\r\nabcd",
    "negative-cl": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
    "plus-cl": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +4\r\n\r\nabcd",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: h\r\nX-A: b\r\n c\r\n\r\n",
    "te-not-chunked-last": b"POST / HTTP/1.1\r\nHost: h\r\n"
    b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    "space-before-colon": b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
    "bare-lf": b"GET / HTTP/1.1\nHost: h\n\n",
    "nul-in-value": b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n",
    "bad-chunk-size": b"POST / HTTP/1.1\r\nHost: h\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    "two-hosts": b"GET / HTTP/1.1\r\nHost: h\r\nHost: evil\r\n\r\n",
    "two-hosts-same": b"GET / HTTP/1.1\r\nHost: h\r\nhost: h\r\n\r\n",
    "no-host": b"GET / HTTP/1.1\r\nX-Host: h\r\n\r\n",
    "no-host-absolute-form": b"GET http://h/ HTTP/1.1\r\n\r\n",
}


@pytest.mark.parametrize("data", SMUGGLING.values(), ids=SMUGGLING.keys())
async def test_smuggling_and_malformed_requests_get_400_and_close(data: bytes) -> None:
    async with serving(ok) as running:
        status, body = await refused(running.port, data)
        assert status == 400
        assert body["error"].startswith("malformed request") and len(body["request_id"]) == 32
        assert running.server.counters.errors == {"bad_request": 1}


async def test_an_http11_request_without_host_gets_400_before_the_handler() -> None:
    # RFC 9112 3.2: a server MUST answer 400 to an HTTP/1.1 request that lacks Host.
    handled: list[bytes] = []

    async def counts(request: Request, response: ResponseWriter) -> None:
        handled.append(request.target)
        await ok(request, response)

    async with serving(counts) as running:
        status, body = await refused(running.port, b"POST /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        assert (status, body["error"]) == (400, "malformed request: no Host header")
        assert running.server.counters.errors == {"bad_request": 1}
        # Pipelined behind a good request: that one is answered first, then the 400.
        client = await RawClient.open(running.port)
        await client.send(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\n\r\n")
        first, second = await client.answer(), await client.answer()
        assert (first.status, second.status) == (200, 400)
        assert await client.closed()
        # An empty Host (a URI without authority) is a Host; HTTP/1.0 may leave it out.
        for data in (b"GET /c HTTP/1.1\r\nHost:\r\n\r\n", b"GET /d HTTP/1.0\r\n\r\n"):
            client = await RawClient.open(running.port)
            await client.send(data)
            assert (await client.answer()).status == 200
        assert handled == [b"/a", b"/c", b"/d"]
        assert running.server.counters.errors == {"bad_request": 2}


@pytest.mark.parametrize(
    "data",
    [
        b"GET * HTTP/1.1\r\nHost: h\r\n\r\n",
        b"POST * HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}",
        b"OPTIONS *x HTTP/1.1\r\nHost: h\r\n\r\n",
        b"OPTIONS *?a=1 HTTP/1.1\r\nHost: h\r\n\r\n",
    ],
    ids=["get", "post", "options-star-x", "options-star-query"],
)
async def test_the_asterisk_form_is_for_options_alone(data: bytes) -> None:
    # RFC 9112 3.2.4: `*` is a target of OPTIONS only, and only `*` itself.
    handled: list[bytes] = []

    async def counts(request: Request, response: ResponseWriter) -> None:
        handled.append(request.method + b" " + request.target)
        await ok(request, response)

    async with serving(counts) as running:
        status, body = await refused(running.port, data)
        assert (status, body["error"]) == (
            400,
            "malformed request: the target * is for OPTIONS only",
        )
        assert running.server.counters.errors == {"bad_request": 1}
        client = await RawClient.open(running.port)
        await client.send(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n")
        assert (await client.answer()).status == 200
        assert handled == [b"OPTIONS *"]


CODINGS = {
    "unknown": b"xchunked",
    "gzip-then-chunked": b"gzip, chunked",
    "identity": b"identity",
    "gzip": b"gzip",
}


@pytest.mark.parametrize("coding", CODINGS.values(), ids=CODINGS.keys())
async def test_a_transfer_coding_other_than_chunked_gets_501_before_the_handler(
    coding: bytes,
) -> None:
    # The framing is redone for the upstream: another coding would be lost with it, its bytes
    # passed on as if they had none.
    handled = 0

    async def counts(request: Request, response: ResponseWriter) -> None:
        nonlocal handled
        handled += 1
        await ok(request, response)

    head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: "
    data = head + coding + b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    async with serving(counts) as running:
        status, body = await refused(running.port, data)
        assert (status, body["error"]) == (501, "transfer coding not supported")
        assert handled == 0
        assert running.server.counters.errors == {"bad_request": 1}
        client = await RawClient.open(running.port)
        await client.send(
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        )
        assert (await client.answer()).body == b"abc"


async def test_a_bad_request_after_a_good_one_is_answered_after_it() -> None:
    async with serving(ok) as running:
        client = await RawClient.open(running.port)
        first_request = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi"
        await client.send(first_request + SMUGGLING["two-cl"])
        first = await client.answer()
        second = await client.answer()
        assert (first.status, first.body, second.status) == (200, b"hi", 400)
        assert await client.closed()


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"GET /\r\n\r\n", 505),
        (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: x\r\n"
            b"Content-Length: 3\r\n\r\nabc",
            400,
        ),
    ],
)
async def test_unsupported_versions_methods_and_upgrades_with_a_body(
    data: bytes, status: int
) -> None:
    async with serving(ok) as running:
        assert (await refused(running.port, data))[0] == status


async def test_a_bodyless_upgrade_is_answered_as_a_plain_request_and_parsing_goes_on() -> None:
    async with serving(ok) as running:
        client = await RawClient.open(running.port)
        await client.send(
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
            b"POST /next HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nok"
        )
        assert (await client.answer()).status == 200
        assert (await client.answer()).body == b"ok"


@pytest.mark.parametrize("pieces", [1, 40], ids=["one-packet", "trickled"])
async def test_head_over_the_limit_gets_431(pieces: int) -> None:
    head = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n"
    async with serving(ok, ServerConfig(max_head_size=4096)) as running:
        client = await RawClient.open(running.port)
        step = len(head) // pieces + 1
        for i in range(0, len(head), step):
            await client.send(head[i : i + step])
        answer = await client.answer()
        assert answer.status == 431
        assert json.loads(answer.body)["error"] == "request head too large"
        assert await client.closed()
        assert running.server.counters.errors == {"head_too_large": 1}


async def test_a_head_under_the_limit_in_many_pieces_is_fine() -> None:
    # Thirty lines of 50-byte values: ~1.7 KB sent, charged ~3.5 KB (HEADER_COST each).
    lines = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 50) for i in range(30))
    head = b"GET / HTTP/1.1\r\nHost: h\r\n" + lines
    async with serving(ok, ServerConfig(max_head_size=4096)) as running:
        client = await RawClient.open(running.port)
        for i in range(0, len(head), 100):
            await client.send(head[i : i + 100])
        await client.send(b"\r\n")
        assert (await client.answer()).status == 200


async def test_slow_headers_are_timed_out_with_408() -> None:
    async with serving(ok, ServerConfig(header_timeout=0.2)) as running:
        client = await RawClient.open(running.port)
        await client.send(b"GET / HTTP/1.1\r\nHost: h\r\n")  # never finished
        answer = await client.answer()
        assert answer.status == 408
        assert json.loads(answer.body)["error"] == "request head not received in time"
        assert await client.closed()
        assert running.server.counters.errors == {"header_timeout": 1}


async def test_a_trickling_head_is_timed_out_even_though_bytes_keep_coming() -> None:
    async with serving(ok, ServerConfig(header_timeout=0.3)) as running:
        client = await RawClient.open(running.port)
        await client.send(b"GET / HTTP/1.1\r\nHost: h\r\n")

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                for _ in range(500):  # a byte every 20 ms, each well within the timeout
                    await client.send(b"X")
                    await asyncio.sleep(0.02)

        trickling = asyncio.create_task(trickle())
        answer = await client.answer()
        trickling.cancel()
        assert answer.status == 408
        assert running.server.counters.errors == {"header_timeout": 1}


async def test_slow_body_is_timed_out_with_408() -> None:
    async with serving(ok, ServerConfig(body_timeout=0.2)) as running:
        client = await RawClient.open(running.port)
        await client.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
        answer = await client.answer()
        assert answer.status == 408
        assert json.loads(answer.body)["error"] == "request body not received in time"
        assert await client.closed()
        assert running.server.counters.errors == {"body_timeout": 1}


async def trickle(client: RawClient, data: bytes, every: float) -> None:
    """Send `data` a byte at a time, `every` seconds apart."""
    for i in range(len(data)):
        client.writer.write(data[i : i + 1])
        await asyncio.sleep(every)


async def test_a_body_trickling_below_the_minimum_rate_gets_408() -> None:
    # Each byte arrives well within body_timeout, so only the rate can end it.
    config = ServerConfig(body_timeout=0.3, body_min_rate=20)
    async with serving(ok, config) as running:
        client = await RawClient.open(running.port)
        await client.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\n")
        sending = asyncio.create_task(trickle(client, b"x" * 1000, 0.1))
        answer = await client.answer()
        sending.cancel()
        assert answer.status == 408
        assert json.loads(answer.body)["error"] == "request body arriving too slowly"
        assert running.server.counters.errors == {"body_too_slow": 1}


async def test_a_body_at_the_minimum_rate_is_received_whole() -> None:
    # Half a second of a body sent at twice the minimum rate outlasts the body timeout.
    config = ServerConfig(body_timeout=0.2, body_min_rate=100)
    async with serving(ok, config) as running:
        client = await RawClient.open(running.port)
        await client.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 200\r\n\r\n")
        for _ in range(10):
            await client.send(b"x" * 20)
            await asyncio.sleep(0.05)
        answer = await client.answer()
        assert (answer.status, answer.body) == (200, b"x" * 200)
        assert running.server.counters.errors == {}


async def test_a_paused_body_is_not_timed_out_while_the_handler_is_behind() -> None:
    release = asyncio.Event()

    async def lagging(request: Request, response: ResponseWriter) -> None:
        await release.wait()
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
        response.send(200, [], b"%d" % size)

    # With reading paused, neither the silence nor the rate (any body falls short of this
    # one until it is whole) counts against the client.
    config = ServerConfig(body_timeout=0.3, body_min_rate=1e9, high_water=1024)
    async with serving(lagging, config) as running:
        client = await RawClient.open(running.port)
        # Written without waiting for the server to read it: it will not, for a while.
        head = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 300000\r\n\r\n"
        client.writer.write(head + b"x" * 300000)
        await asyncio.sleep(0.6)  # longer than the body timeout, with reading paused
        release.set()
        assert (await client.answer()).body == b"300000"
        assert running.server.counters.errors == {}


async def test_idle_keep_alive_connections_are_closed() -> None:
    async with serving(ok, ServerConfig(keepalive_timeout=0.2)) as running:
        client = await RawClient.open(running.port)
        await client.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert (await client.answer()).status == 200
        assert await client.closed()
        assert running.server.counters.idle_closed == 1
        await eventually(lambda: running.server.connections == 0)


async def test_a_client_that_stops_reading_is_cut_off_after_the_write_timeout() -> None:
    outcome: list[str] = []

    async def flood(request: Request, response: ResponseWriter) -> None:
        response.start(200, [])
        try:
            for _ in range(10_000):
                await response.write(b"x" * 65536)
        except ClientDisconnected:
            outcome.append("stopped")
            raise

    async with serving(flood, ServerConfig(write_timeout=0.2)) as running:
        client = await RawClient.open(running.port)
        await client.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")  # and never reads the answer
        await eventually(lambda: outcome == ["stopped"])
        assert running.server.counters.errors == {"write_timeout": 1, "client_disconnect": 1}


async def test_a_client_still_uploading_reads_its_413() -> None:
    async def reader(request: Request, response: ResponseWriter) -> None:
        response.send(200, [], await request.read(1000))

    async with serving(reader) as running:
        client = await RawClient.open(running.port)
        await client.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 50000000\r\n\r\n")

        async def upload() -> None:
            with contextlib.suppress(ConnectionError):
                for _ in range(760):
                    await client.send(b"x" * 65536)

        uploading = asyncio.create_task(upload())
        answer = await client.answer()  # not lost to a reset while the upload goes on
        assert answer.status == 413
        assert await client.closed()
        await uploading


async def test_a_large_early_answer_survives_an_upload_still_going_on() -> None:
    answer_size = 8 << 20

    async def early(request: Request, response: ResponseWriter) -> None:
        response.send(200, [], b"y" * answer_size)  # without reading the 50 MB body

    async with serving(early) as running:
        client = await RawClient.open(running.port)
        await client.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 50000000\r\n\r\n")

        async def upload() -> None:
            with contextlib.suppress(ConnectionError):
                for _ in range(760):
                    await client.send(b"x" * 65536)

        uploading = asyncio.create_task(upload())
        answer = await client.answer()
        assert (answer.status, len(answer.body)) == (200, answer_size)
        assert answer.header(b"connection") == b"close"
        uploading.cancel()


async def test_an_answer_before_the_whole_body_closes_the_connection() -> None:
    async def early(request: Request, response: ResponseWriter) -> None:
        response.send(403, [], b"no")  # without reading the body

    async with serving(early) as running:
        client = await RawClient.open(running.port)
        await client.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nabc")
        answer = await client.answer()
        assert (answer.status, answer.header(b"connection")) == (403, b"close")
        assert await client.closed()


async def test_pipelined_requests_beyond_the_limit_are_left_unread() -> None:
    async with serving(ok, ServerConfig(max_pipelined=2)) as running:
        client = await RawClient.open(running.port)
        await client.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" * 6)
        statuses = [(await client.answer()).status for _ in range(3)]  # 1 running + 2 queued
        assert statuses == [200, 200, 200]
        assert await client.closed()
        assert running.server.counters.errors == {"pipeline_overflow": 1}


async def test_shutdown_drains_in_flight_requests_and_closes_idle_ones() -> None:
    release = asyncio.Event()

    async def held(request: Request, response: ResponseWriter) -> None:
        if request.target == b"/held":
            await release.wait()
        response.send(200, [], request.target)

    async with serving(held) as running:
        idle = await RawClient.open(running.port)
        await idle.send(b"GET /quick HTTP/1.1\r\nHost: h\r\n\r\n")
        assert (await idle.answer()).body == b"/quick"
        busy = await RawClient.open(running.port)
        await busy.send(b"GET /held HTTP/1.1\r\nHost: h\r\n\r\n")
        await eventually(lambda: running.server.counters.in_flight == 1)
        stopping = asyncio.create_task(running.server.shutdown(5.0))
        assert await idle.closed()
        with pytest.raises(OSError):
            await RawClient.open(running.port)
        assert not stopping.done()
        release.set()
        answer = await busy.answer()
        assert (answer.status, answer.body) == (200, b"/held")
        assert answer.header(b"connection") == b"close"
        await stopping
        assert running.server.connections == 0


async def test_shutdown_aborts_what_outlives_the_grace_period() -> None:
    async def stuck(request: Request, response: ResponseWriter) -> None:
        await asyncio.Event().wait()

    async with serving(stuck) as running:
        client = await RawClient.open(running.port)
        await client.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        await eventually(lambda: running.server.counters.in_flight == 1)
        await running.server.shutdown(0.1)
        assert await client.closed()
        assert running.server.counters.in_flight == 0


async def test_trailers_count_against_the_head_limit_and_are_not_headers() -> None:
    seen: list[bytes | None] = []

    async def body_then_header(request: Request, response: ResponseWriter) -> None:
        body = await request.read(1 << 20)
        seen.append(request.headers.get(b"x-late"))
        response.send(200, [], body)

    head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    async with serving(body_then_header, ServerConfig(max_head_size=4096)) as running:
        client = await RawClient.open(running.port)
        await client.send(head + b"5\r\nhello\r\n0\r\nX-Late: injected\r\n\r\n")
        assert (await client.answer()).body == b"hello" and seen == [None]
        # A trailer value that never ends: every read after the last chunk is counted.
        client = await RawClient.open(running.port)
        await client.send(head + b"5\r\nhello\r\n0\r\nX-T: ")
        for _ in range(5):  # the fifth read passes the 4096 bytes; nothing is sent after it
            await client.send(b"v" * 1000)
        answer = await client.answer()
        assert answer.status == 400 and b"trailers too large" in answer.body
        assert await client.closed()


async def test_many_tiny_header_lines_are_charged_what_they_cost() -> None:
    # 10,000 three-byte lines are 50 KB on the wire but ~1.5 MB as Python objects.
    head = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"a:\r\n" * 10_000 + b"\r\n"
    async with serving(ok) as running:
        status, body = await refused(running.port, head)
    assert status == 431 and body["error"] == "request head too large"


async def test_a_client_that_does_not_read_gets_no_further_answers_made() -> None:
    handled = 0
    big = b"x" * (8 << 20)

    async def large(request: Request, response: ResponseWriter) -> None:
        nonlocal handled
        handled += 1
        response.send(200, [], big)

    async with serving(large) as running:
        client = await RawClient.open(running.port)
        await client.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" * 10)
        await eventually(lambda: handled >= 1)
        await asyncio.sleep(0.3)  # time enough to make the rest, were they made
        # Each answer made would sit in the server's buffer until the client read it.
        assert handled <= 2
        for _ in range(10):
            assert (await client.answer(within=30)).body == big
        assert handled == 10


async def test_connections_over_the_limit_are_closed_as_they_are_accepted() -> None:
    async with serving(ok, ServerConfig(max_connections=2)) as running:
        first, second = [await RawClient.open(running.port) for _ in range(2)]
        await eventually(lambda: running.server.connections == 2)
        third = await RawClient.open(running.port)
        assert await third.closed()
        assert running.server.counters.errors == {"connection_limit": 1}
        assert running.server.counters.open == 2
        await first.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert (await first.answer()).status == 200  # those within the limit are served
        second.close()
        await eventually(lambda: running.server.connections == 1)
        fourth = await RawClient.open(running.port)
        await fourth.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert (await fourth.answer()).status == 200


async def test_connections_over_one_clients_limit_are_closed_and_others_still_served() -> None:
    config = ServerConfig(max_connections=10, max_connections_per_client=2)
    async with serving(ok, config) as running:
        first, second = [await RawClient.open(running.port) for _ in range(2)]
        await eventually(lambda: running.server.connections == 2)
        third = await RawClient.open(running.port)
        assert await third.closed()
        other = await RawClient.open(running.port, source="127.0.0.2")
        await other.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert (await other.answer()).status == 200  # another client is not shut out
        status = running.server.status()
        assert status["errors"] == {"client_connection_limit": 1}
        assert (status["open"], status["clients"]) == (3, 2)
        second.close()
        await eventually(lambda: running.server.connections == 2)
        fourth = await RawClient.open(running.port)
        await fourth.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert (await fourth.answer()).status == 200  # a closed connection gives its place back
        for client in (first, fourth, other):
            client.close()
        await eventually(lambda: running.server.status()["clients"] == 0)


async def test_a_body_of_tiny_chunks_held_unread_costs_about_its_size() -> None:
    # 40,000 two-byte chunks: 80 KB of body, past the 64 KiB high-water mark, so reading
    # pauses. Kept as one object a piece, they held ~1.8 MB.
    arrived: list[Request] = []

    async def holds(request: Request, response: ResponseWriter) -> None:
        arrived.append(request)
        await asyncio.sleep(30)

    async with serving(holds) as running:
        client = await RawClient.open(running.port)
        await client.send(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
        await eventually(lambda: bool(arrived))
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            await client.send(b"2\r\nab\r\n" * 40_000)
            await eventually(lambda: arrived[0].body.received > 64 * 1024)
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert held < 4 * 64 * 1024
        client.close()


async def test_small_and_large_pieces_come_out_whole_and_in_order() -> None:
    body = BodyBuffer(_NoFlow(), 1 << 20)
    pieces = [b"a", b"bc", b"x" * 5000, b"d", b"e" * 2000, b"f", b"g"]
    for piece in pieces[:4]:
        body.feed(piece)
    first = await anext(body.chunks())
    for piece in pieces[4:]:
        body.feed(piece)
    body.finish()
    rest = await body.read(None, BodyTooLarge)
    assert type(first) is bytes and type(rest) is bytes
    assert first + rest == b"".join(pieces)
    assert body.received == len(first + rest)


async def test_a_body_in_one_small_piece_is_handed_on_as_it_came() -> None:
    body = BodyBuffer(_NoFlow(), 1 << 20)
    piece = b'{"inputs": []}'
    body.feed(piece)
    body.finish()
    assert await body.read(None, BodyTooLarge) is piece  # no copy: the usual request


class _NoFlow:
    def pause_body(self) -> None:
        """Nothing to pause."""

    def resume_body(self) -> None:
        """Nothing to resume."""
