"""The server on real sockets: targets, headers, framing, pipelining, 100-continue, errors."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from guardproxy.transport import Request, ResponseWriter, ServerConfig

from .support import RawClient, eventually, serving


async def echo(request: Request, response: ResponseWriter) -> None:
    """Answer what arrived: method, raw target, headers in order, body length."""
    body = await request.read(1 << 20)
    doc = {
        "method": request.method.decode(),
        "target": request.target.decode("latin-1"),
        "version": request.version,
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.headers],
        "body": body.decode("latin-1"),
        "peer": list(request.peer or ()),
    }
    response.send(200, [(b"Content-Type", b"application/json")], json.dumps(doc).encode())


@pytest.mark.parametrize(
    "method", [b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS", b"PROPFIND", b"PURGE"]
)
async def test_every_method_and_raw_target_arrive_as_sent(method: bytes) -> None:
    target = b"/v2//models/a%2Fb/../infer;p=1?x=%20&y=caf%C3%A9&y=2&empty="
    async with serving(echo) as running:
        client = await RawClient.open(running.port)
        await client.send(method + b" " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n")
        doc = json.loads((await client.answer()).body)
        client.close()
    assert doc["method"] == method.decode()
    assert doc["target"] == target.decode()
    assert doc["peer"][0] == "127.0.0.1"


async def test_headers_keep_their_order_case_and_duplicates() -> None:
    sent = [
        (b"Host", b"h"),
        (b"X-b", b"2"),
        (b"x-A", b"1"),
        (b"X-B", b"3"),
        (b"Accept", b"*/*"),
        (b"X-Empty", b""),
    ]
    head = b"".join(k + b": " + v + b"\r\n" for k, v in sent)
    async with serving(echo) as running:
        client = await RawClient.open(running.port)
        await client.send(b"GET / HTTP/1.1\r\n" + head + b"\r\n")
        doc = json.loads((await client.answer()).body)
    assert doc["headers"] == [[k.decode(), v.decode()] for k, v in sent]


async def test_header_lookup_ignores_case() -> None:
    seen: list[Request] = []

    async def keep(request: Request, response: ResponseWriter) -> None:
        seen.append(request)
        response.send(204, [])

    async with serving(keep) as running:
        client = await RawClient.open(running.port)
        await client.send(
            b"GET / HTTP/1.1\r\nHost: h\r\nX-Thing: a\r\nx-thing: b\r\nConnection: x, Close\r\n\r\n"
        )
        await client.answer()
    headers = seen[0].headers
    assert headers.get(b"X-THING") == b"a"
    assert headers.getall(b"x-thing") == [b"a", b"b"]
    assert headers.tokens(b"connection") == {b"x", b"close"}
    assert b"X-Thing" in headers and b"x-other" not in headers
    assert seen[0].keep_alive is False


async def test_keep_alive_serves_many_requests_on_one_connection() -> None:
    async with serving(echo) as running:
        async with aiohttp.ClientSession() as session:
            for i in range(20):
                async with session.post(f"http://127.0.0.1:{running.port}/n", data=b"x" * i) as r:
                    assert r.status == 200
                    assert json.loads(await r.read())["body"] == "x" * i
        assert running.server.counters.connections == 1
        assert running.server.counters.requests == 20


async def test_three_pipelined_requests_in_one_packet_are_answered_in_order() -> None:
    order: list[bytes] = []
    release = asyncio.Event()

    async def slow_first(request: Request, response: ResponseWriter) -> None:
        order.append(request.target)
        if request.target == b"/1":
            await release.wait()  # the next ones must wait for this answer
        body = await request.read()
        response.send(200, [], request.target + b":" + body)

    packet = (
        b"POST /1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n"
        b"POST /3 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\n"
    )
    async with serving(slow_first) as running:
        client = await RawClient.open(running.port)
        await client.send(packet)
        await eventually(lambda: order == [b"/1"])
        assert running.server.counters.in_flight == 1
        release.set()
        answers = [await client.answer() for _ in range(3)]
    assert [a.body for a in answers] == [b"/1:abc", b"/2:", b"/3:xy"]
    assert order == [b"/1", b"/2", b"/3"]


async def test_chunked_request_and_chunked_response() -> None:
    sent: list[int] = []

    async def stream_back(request: Request, response: ResponseWriter) -> None:
        response.start(200, [(b"Content-Type", b"text/plain")])
        async for chunk in request.stream():
            await response.write(chunk.upper())
        response.end(b"!")
        sent.append(response.sent)

    async with serving(stream_back) as running:
        client = await RawClient.open(running.port)
        await client.send(
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nTrailer-A: x\r\n\r\n"
        )
        answer = await client.answer()
    assert answer.chunked and answer.header(b"content-length") is None
    assert answer.body == b"HELLO WORLD!" and sent == [12]  # body bytes, not chunk framing


@pytest.mark.parametrize(
    ("method", "status", "has_length"),
    [(b"HEAD", 200, True), (b"GET", 204, False), (b"GET", 304, True), (b"HEAD", 404, True)],
)
async def test_head_204_304_have_no_body(method: bytes, status: int, has_length: bool) -> None:
    sent: list[int] = []

    async def no_body(request: Request, response: ResponseWriter) -> None:
        response.start(status, [(b"Content-Length", b"42"), (b"ETag", b'"v"')])
        await response.write(b"ignored")
        response.end()
        sent.append(response.sent)

    async with serving(no_body) as running:
        client = await RawClient.open(running.port)
        await client.send(
            method
            + b" /x HTTP/1.1\r\nHost: h\r\n\r\n"
            + method
            + b" /y HTTP/1.1\r\nHost: h\r\n\r\n"
        )
        first = await client.answer(head_request=method == b"HEAD")
        second = await client.answer(head_request=True)  # the next head follows at once
    assert first.status == status
    assert (first.header(b"content-length") == b"42") is has_length
    assert first.header(b"transfer-encoding") is None
    assert second.status == status and sent == [0, 0]


async def test_send_frames_with_its_own_length_and_drops_caller_framing() -> None:
    async def framed(request: Request, response: ResponseWriter) -> None:
        headers = [
            (b"Content-Length", b"999"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Keep-Alive", b"timeout=1"),
            (b"X-Kept", b"yes"),
        ]
        response.send(201, headers, b"12345", reason=b"Made")

    async with serving(framed) as running:
        client = await RawClient.open(running.port)
        await client.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        answer = await client.answer()
    assert (answer.status, answer.reason, answer.body) == (201, b"Made", b"12345")
    names = [k.lower() for k, _ in answer.headers]
    assert names == [b"x-kept", b"content-length"]
    assert b"server" not in names


async def test_http10_close_delimited_and_keep_alive_with_length() -> None:
    async def streamed(request: Request, response: ResponseWriter) -> None:
        response.start(200, [])
        await response.write(b"part1 ")
        response.end(b"part2")

    async with serving(streamed) as running:
        client = await RawClient.open(running.port)
        await client.send(b"GET / HTTP/1.0\r\n\r\n")
        answer = await client.answer()
        assert answer.body == b"part1 part2"
        assert answer.header(b"transfer-encoding") is None
        assert answer.header(b"connection") == b"close"
        assert await client.closed()

    async with serving(echo) as running:
        client = await RawClient.open(running.port)
        for _ in range(2):
            await client.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            answer = await client.answer()
            assert answer.header(b"connection") == b"keep-alive"
            assert json.loads(answer.body)["version"] == "1.0"


async def test_connection_close_from_client_or_handler_closes_after_the_answer() -> None:
    async def closing(request: Request, response: ResponseWriter) -> None:
        headers = [(b"Connection", b"close")] if request.target == b"/bye" else []
        response.send(200, headers, b"ok")

    async with serving(closing) as running:
        for head in (
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            b"GET /bye HTTP/1.1\r\nHost: h\r\n\r\n",
        ):
            client = await RawClient.open(running.port)
            await client.send(head + b"GET /ignored HTTP/1.1\r\nHost: h\r\n\r\n")
            answer = await client.answer()
            assert answer.header(b"connection") == b"close"
            assert await client.closed()
        assert running.server.counters.requests == 2


async def test_expect_100_continue_is_answered_when_the_body_is_asked_for() -> None:
    asked = asyncio.Event()

    async def reader(request: Request, response: ResponseWriter) -> None:
        await asked.wait()
        response.send(200, [], await request.read(100))

    async with serving(reader) as running:
        client = await RawClient.open(running.port)
        await client.send(
            b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
        )
        with pytest.raises(TimeoutError):
            await client.answer(within=0.1)  # nothing until the handler reads
        asked.set()
        interim = await client.answer()
        assert interim.status == 100
        await client.send(b"body")
        answer = await client.answer()
    assert (answer.status, answer.body) == (200, b"body")


async def test_expect_100_with_a_length_over_the_limit_gets_413_without_continue() -> None:
    async def reader(request: Request, response: ResponseWriter) -> None:
        response.send(200, [], await request.read(10))

    async with serving(reader) as running:
        client = await RawClient.open(running.port)
        await client.send(
            b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n"
        )
        answer = await client.answer()
        assert answer.status == 413
        assert json.loads(answer.body)["error"] == "request body larger than 10 bytes"
        assert await client.closed()
        assert running.server.counters.errors == {"body_too_large": 1}


async def test_chunked_body_over_the_limit_gets_413_and_close() -> None:
    async def reader(request: Request, response: ResponseWriter) -> None:
        response.send(200, [], await request.read(10))

    async with serving(reader) as running:
        client = await RawClient.open(running.port)
        await client.send(
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n"
        )
        await client.send(b"8\r\n12345678\r\n")
        answer = await client.answer()
        body = json.loads(answer.body)
        assert answer.status == 413 and set(body) == {"error", "request_id"}
        assert answer.header(b"x-request-id") == body["request_id"].encode()
        assert await client.closed()


async def test_handler_errors_give_500_json_or_abort() -> None:
    async def failing(request: Request, response: ResponseWriter) -> None:
        if request.target == b"/late":
            response.start(200, [(b"Content-Length", b"100")])
            await response.write(b"partial")
        if request.target == b"/silent":
            return
        raise RuntimeError("secret=hunter2")

    async with serving(failing) as running:
        client = await RawClient.open(running.port)
        await client.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        answer = await client.answer()
        assert answer.status == 500 and b"hunter2" not in answer.body
        assert json.loads(answer.body)["error"] == "internal error"
        await client.send(b"GET /silent HTTP/1.1\r\nHost: h\r\n\r\n")  # still usable after a 500
        assert (await client.answer()).status == 500
        await client.send(b"GET /late HTTP/1.1\r\nHost: h\r\n\r\n")
        with pytest.raises((asyncio.IncompleteReadError, ConnectionResetError)):
            await client.answer()  # reset: never a short body taken as complete
        assert running.server.counters.errors == {"handler_error": 3}


async def test_custom_error_builder_names_the_request() -> None:
    def errors(
        status: int, message: str, request: Request | None
    ) -> tuple[list[tuple[bytes, bytes]], bytes]:
        rid = request.headers.get(b"x-request-id", b"none") if request else b"none"
        body = json.dumps({"error": message, "request_id": rid.decode()}).encode()
        return [(b"content-type", b"application/json"), (b"x-request-id", rid)], body

    async def failing(request: Request, response: ResponseWriter) -> None:
        raise RuntimeError

    async with serving(failing, errors=errors) as running:
        client = await RawClient.open(running.port)
        await client.send(b"GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: abc\r\n\r\n")
        answer = await client.answer()
    assert json.loads(answer.body) == {"error": "internal error", "request_id": "abc"}


async def test_bad_header_values_from_the_handler_are_refused() -> None:
    async def splitting(request: Request, response: ResponseWriter) -> None:
        response.send(200, [(b"X-Id", b"a\r\nSet-Cookie: evil=1")], b"x")

    async with serving(splitting, ServerConfig()) as running:
        client = await RawClient.open(running.port)
        await client.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        answer = await client.answer()
    assert answer.status == 500
    assert all(k.lower() != b"set-cookie" for k, _ in answer.headers)
