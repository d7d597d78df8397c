"""Sample queue, writer and sinks: real files in tmp_path, a real Redis stream."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis_asyncio

from guardproxy.guards.exchange import dumps
from guardproxy.sampling.redact import TOO_DEEP, Redactor
from guardproxy.sampling.sinks import (
    INLINE_BYTES,
    JsonlSink,
    RedisStreamSink,
    Sample,
    SampleQueue,
    SampleWriter,
)
from guardproxy.testing import eventually

REDIS_URL = "redis://127.0.0.1:6379/0"
SECRETS = [
    "ana.lim@example.com",
    "+65 6123 4567",
    "(555) 123-4567",
    "4111 1111 1111 1111",
    "S1234567D",
    "999-88-7777",
    "vip-customer-17",
    "3174051203900001",
]


def sample(
    request: Any,
    response: Any = None,
    redactor: Redactor | None = None,
    flags: list[str] | None = None,
    rid: str = "r-1",
) -> Sample:
    body = dumps(response) if response is not None else b""
    return Sample(
        rid,
        time.time(),
        "sg",
        "v1",
        ["female"],
        [1],
        [0.5],
        flags or [],
        [],
        200,
        dumps(request),
        body,
        redactor,
    )


def read_all(directory: Path) -> str:
    return "".join(p.read_text() for p in directory.glob("samples-*.jsonl"))


def lines(directory: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for p in sorted(directory.glob("samples-*.jsonl"))
        for line in p.read_text().splitlines()
    ]


async def test_writer_redacts_everything_it_writes(tmp_path: Path) -> None:
    redactor = Redactor(
        ("account", "$.inputs[?name=='ssn']"), ("email", "phone", "card", "national_id")
    )
    request = {
        "inputs": [
            {"name": "ssn", "shape": [1], "datatype": "BYTES", "data": ["999-88-7777"]},
            {"name": "age", "shape": [1], "datatype": "INT64", "data": [41]},
        ],
        "parameters": {
            "account": "vip-customer-17",
            "note": "ana.lim@example.com, +65 6123 4567 or (555) 123-4567",
        },
    }
    response = {
        "cards": ["4111 1111 1111 1111", "4111 1111 1111 1112"],
        "ids": "S1234567D 3174051203900001",
    }
    queue = SampleQueue(100)
    writer = SampleWriter(queue, JsonlSink(tmp_path))
    writer.start()
    for i in range(5):
        assert queue.offer(sample(request, response, redactor, rid=f"r-{i}"))
    await writer.stop(flush=True)
    text = read_all(tmp_path)
    for secret in SECRETS:
        assert secret not in text
    assert "4111 1111 1111 1112" in text  # fails the Luhn check: not a card
    records = lines(tmp_path)
    assert [r["request_id"] for r in records] == [f"r-{i}" for i in range(5)]
    assert records[0]["request"]["inputs"][0]["data"] == ["[REDACTED:ssn]"]
    assert records[0]["request"]["inputs"][1]["data"] == [41]
    assert writer.written == 5 and writer.errors == 0


def test_rotation_by_size_never_overshoots_by_more_than_a_line(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path, max_bytes=1024, max_age=3600)
    line = b'{"x":"' + b"a" * 90 + b'"}\n'
    sink.write_lines([line] * 50)
    files = sorted(tmp_path.glob("samples-*.jsonl"))
    assert len(files) == 5
    assert all(p.stat().st_size <= 1024 for p in files)
    assert sum(p.stat().st_size for p in files) == 50 * len(line)


def test_rotation_by_age(tmp_path: Path) -> None:
    now = [1_700_000_000.0]
    sink = JsonlSink(tmp_path, max_bytes=10**6, max_age=60, clock=lambda: now[0])
    sink.write_lines([b"{}\n"])
    now[0] += 30
    sink.write_lines([b"{}\n"])
    now[0] += 31
    sink.write_lines([b"{}\n"])
    names = sorted(p.name for p in tmp_path.glob("samples-*.jsonl"))
    assert names == [
        "samples-20231114T221320.000000Z.jsonl",
        "samples-20231114T221421.000000Z.jsonl",
    ]


async def test_full_queue_drops_and_counts_without_waiting() -> None:
    queue = SampleQueue(2)
    started = time.perf_counter()
    results = [queue.offer(sample({})) for _ in range(5)]
    assert time.perf_counter() - started < 0.05
    assert results == [True, True, False, False, False]
    assert (queue.offered, queue.dropped) == (5, 3)


class BrokenSink:
    async def write(self, records: list[dict[str, Any]]) -> None:
        raise OSError("disk full")

    async def close(self) -> None:
        return None


async def test_failing_sink_is_counted_and_writer_keeps_going(tmp_path: Path) -> None:
    queue = SampleQueue(10)
    writer = SampleWriter(queue, BrokenSink())
    writer.start()
    queue.offer(sample({}))
    await writer.stop(flush=True)
    queue.offer(sample({}))
    writer.start()
    await writer.stop(flush=True)
    assert writer.errors == 2 and writer.dropped == 2 and writer.written == 0


async def test_redis_stream_sink_against_real_redis() -> None:
    stream = f"guardproxy-test:samples:{uuid.uuid4().hex}"
    client = redis_asyncio.from_url(REDIS_URL)
    try:
        queue = SampleQueue(100)
        writer = SampleWriter(queue, RedisStreamSink(REDIS_URL, stream, maxlen=1000))
        writer.start()
        for i in range(3):
            queue.offer(sample({"email": "bo@example.org"}, flags=["x"], rid=f"q{i}"))
        await writer.stop(flush=True)
        entries = await client.xrange(stream)
        assert entries is not None
        records = [json.loads(fields[b"sample"]) for _, fields in entries if fields]
        assert [r["request_id"] for r in records] == ["q0", "q1", "q2"]
        assert records[0]["request"] == {"email": "[REDACTED:email]"}
    finally:
        await client.delete(stream)
        await client.aclose()


async def test_small_samples_are_redacted_between_requests_and_large_ones_in_a_thread(
    tmp_path: Path,
) -> None:
    on_loop: list[tuple[int, bool]] = []  # (body bytes, redacted on the loop's thread)

    class Watching(Redactor):
        def body(self, body: bytes) -> Any:
            if body:  # the request; these samples have no answer
                on_loop.append((len(body), threading.current_thread() is threading.main_thread()))
            return super().body(body)

    redactor = Watching((), ("email",))
    queue = SampleQueue(100)
    writer = SampleWriter(queue, JsonlSink(tmp_path))
    writer.start()
    small, large = {"mail": "ana.lim@example.com"}, {"mail": "ana.lim@example.com " * 300}
    for rid, request in (("s", small), ("l", large), ("u", small)):
        offered = sample(request, redactor=redactor, rid=rid)
        offered.size = -1 if rid == "u" else len(offered.request)  # "u": size not known
        assert queue.offer(offered)
    await writer.stop(flush=True)
    assert [(n > INLINE_BYTES, loop) for n, loop in on_loop] == [
        (False, True), (True, False), (False, False)
    ]  # fmt: skip
    assert "ana.lim@example.com" not in read_all(tmp_path) and len(lines(tmp_path)) == 3


@pytest.mark.parametrize("flush", [True, False])
async def test_stop_flush_controls_what_is_left(tmp_path: Path, flush: bool) -> None:
    queue = SampleQueue(100)
    writer = SampleWriter(queue, JsonlSink(tmp_path))
    for _ in range(3):
        queue.offer(sample({}))
    writer.start()
    await writer.stop(flush=flush)
    assert len(lines(tmp_path)) + queue.queue.qsize() == 3
    if flush:
        assert len(lines(tmp_path)) == 3


async def test_samples_arriving_together_are_written_in_one_batch(tmp_path: Path) -> None:
    queue = SampleQueue(100)
    writer = SampleWriter(queue, JsonlSink(tmp_path), gather=0.3)
    writer.start()
    redactor = Redactor((), ("email",))
    for i in range(10):
        assert queue.offer(sample({"x": i}, {"y": i}, redactor, rid=f"r-{i}"))
        await asyncio.sleep(0.001)
    await eventually(lambda: writer.written == 10)
    assert writer.batches == 1  # one thread hand-off for all ten
    queue.offer(sample({"x": 10}, {"y": 10}, redactor, rid="r-10"))
    await asyncio.sleep(0)  # the writer takes it and starts gathering
    await writer.stop(flush=True)
    assert writer.written == 11  # the sample taken before stop() is not lost


async def test_an_idle_writer_deletes_files_past_retention(tmp_path: Path) -> None:
    now = [1_700_000_000.0]
    sink = JsonlSink(tmp_path, max_age=10, retention=30, clock=lambda: now[0])
    sink.write_lines([b"{}\n"])
    writer = SampleWriter(SampleQueue(10), sink, maintain_every=0.02)
    writer.start()
    now[0] += 31  # nothing written since: only the idle check can delete it
    await eventually(lambda: not list(tmp_path.glob("samples-*.jsonl")))
    await writer.stop()
    assert writer.status()["sink"]["deleted_files"] == 1


@pytest.mark.parametrize("sink_kind", ["jsonl", "redis"])
async def test_a_body_nested_deeper_than_json_is_written_costs_only_itself(
    tmp_path: Path, sink_kind: str
) -> None:
    # Parsing takes 1,024 levels, writing 255: one such body made the whole batch fail.
    deep = b'{"a":' * 300 + b"1" + b"}" * 300
    stream = f"guardproxy-test:samples:{uuid.uuid4().hex}"
    sink = JsonlSink(tmp_path) if sink_kind == "jsonl" else RedisStreamSink(REDIS_URL, stream)
    queue = SampleQueue(100)
    writer = SampleWriter(queue, sink, gather=0.2)
    writer.start()
    redactor = Redactor((), ("email",))
    bodies = [{"x": 0}, {"y": 0}], [{}, {}], [{"x": 2}, {}]
    for i, (request, answer) in enumerate(bodies):
        made = sample(request, answer, redactor, rid=f"r-{i}")
        if i == 1:
            made = replace(made, request=deep, response=deep, size=2 * len(deep))
        assert queue.offer(made)
    await eventually(lambda: writer.written == 3)
    await writer.stop(flush=True)
    assert (writer.errors, writer.dropped) == (0, 0)
    if sink_kind == "jsonl":
        records = lines(tmp_path)
    else:
        client = redis_asyncio.from_url(REDIS_URL)
        entries = await client.xrange(stream)
        await client.delete(stream)
        await client.aclose()
        records = [json.loads(fields[b"sample"]) for _, fields in entries]
    assert [(r["request_id"], r["request"], r["response"]) for r in records] == [
        ("r-0", {"x": 0}, {"y": 0}),
        ("r-1", TOO_DEEP, TOO_DEEP),
        ("r-2", {"x": 2}, {}),
    ]
