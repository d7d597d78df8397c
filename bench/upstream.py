"""The benchmark's model server: the demo Adult model over KServe v2, plus GET /ping."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

from aiohttp import web

from guardproxy.demo.model import LogisticModel, load_model
from guardproxy.demo.server import v2_rows
from guardproxy.guards.exchange import dumps, loads
from guardproxy.payloads.binary import HEADER, BinaryBody, decode_request, encode

GUARDED_PATH = "/v2/models/adult/infer"
UNGUARDED_PATH = "/unguarded/v2/models/adult/infer"
MODEL = web.AppKey("model", LogisticModel)


async def ping(_: web.Request) -> web.Response:
    """A generic liveness answer."""
    return web.Response(text="pong")


async def infer(request: web.Request) -> web.Response:
    """Score every row of a v2 request; answer the score and the 0/1 label.

    A request in the binary tensor extension gets its answer in it too, every output binary.
    """
    body, header = await request.read(), request.headers.get(HEADER)
    doc = decode_request(body, header).doc if header is not None else loads(body)
    scores = [request.app[MODEL].score(row) for row in v2_rows(doc)]
    answer = {
        "model_name": "adult",
        "outputs": [
            {"name": "score", "shape": [len(scores)], "datatype": "FP32", "data": scores},
            {"name": "label", "shape": [len(scores)], "datatype": "INT64",
             "data": [int(s >= 0.5) for s in scores]},
        ],
    }  # fmt: skip
    if header is None:
        return web.Response(body=dumps(answer), content_type="application/json")
    encoded = encode(BinaryBody(answer, "outputs"))
    headers = {HEADER: str(encoded.header_length), "Content-Type": "application/octet-stream"}
    return web.Response(body=encoded.body, headers=headers)


CHAT_PATH = "/v1/chat/completions"
WORDS = ("the", "model", "streams", "its", "answer", "one", "word", "at", "a", "time")


async def chat(request: web.Request) -> web.StreamResponse:
    """An OpenAI chat stream of `max_tokens` events of one word each, then stop and [DONE]."""
    doc = loads(await request.read())
    events = int(doc.get("max_tokens", 100))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    head = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":'
    for i in range(events):
        delta = dumps([{"index": 0, "delta": {"content": f" {WORDS[i % len(WORDS)]}"}}])
        await response.write(head + delta + b"}\n\n")
    await response.write(head + b'[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n')
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def build_app() -> web.Application:
    """The upstream app; the same handler answers the guarded and the unguarded path."""
    app = web.Application()
    app[MODEL] = load_model()
    app.router.add_get("/ping", ping)
    app.router.add_post(GUARDED_PATH, infer)
    app.router.add_post(UNGUARDED_PATH, infer)
    app.router.add_post(CHAT_PATH, chat)
    app.router.add_post("/unguarded" + CHAT_PATH, chat)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m bench.upstream --port P`: serve on 127.0.0.1 with uvloop."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    web.run_app(build_app(), host="127.0.0.1", port=args.port, access_log=None,
                print=None, loop=new_loop())  # fmt: skip


def new_loop() -> asyncio.AbstractEventLoop:
    """A fresh uvloop event loop (asyncio's when uvloop is missing)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


if __name__ == "__main__":
    main()
