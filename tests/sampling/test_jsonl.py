"""The JSONL sink on real files: within its byte budget, oldest first, files past retention gone."""

from __future__ import annotations

import json
from pathlib import Path

from guardproxy.sampling.jsonl import JsonlSink


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def on_disk(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("samples-*.jsonl"))


def line(i: int, size: int = 200) -> bytes:
    text = json.dumps({"i": i, "pad": ""})
    return json.dumps({"i": i, "pad": "x" * (size - len(text) - 1)}).encode() + b"\n"


def test_files_stay_within_the_budget_oldest_deleted_first(tmp_path: Path) -> None:
    clock = Clock()
    sink = JsonlSink(tmp_path, max_bytes=1024, max_total_bytes=4096, clock=clock)
    for i in range(200):
        clock.now += 0.001
        sink.write_lines([line(i)])
        assert on_disk(tmp_path) <= 4096 and sink.total_bytes == on_disk(tmp_path)
    sink._close_file()
    kept = sorted(
        json.loads(row)["i"] for p in tmp_path.glob("*.jsonl") for row in p.read_text().splitlines()
    )
    assert kept == list(range(200 - len(kept), 200))  # the newest, contiguous
    status = sink.status()
    assert status["deleted_files"] > 0 and status["deleted_bytes"] > 0 and status["bytes"] <= 4096


def test_a_line_larger_than_the_budget_is_dropped_and_counted(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path, max_bytes=1024, max_total_bytes=2048)
    sink.write_lines([line(1), line(2, size=5000), line(3)])
    assert sink.dropped == 1 and on_disk(tmp_path) == 400


def test_files_past_retention_are_deleted_on_write_and_when_idle(tmp_path: Path) -> None:
    clock = Clock()
    sink = JsonlSink(tmp_path, max_bytes=1024, max_age=60, retention=300, clock=clock)
    sink.write_lines([line(1)])
    clock.now += 100
    sink.write_lines([line(2)])  # a new file: the first is 100 s old
    assert len(list(tmp_path.glob("*.jsonl"))) == 2
    clock.now += 250
    sink._maintain()  # the first file is past 300 s, the second is not
    assert len(list(tmp_path.glob("*.jsonl"))) == 1
    clock.now += 100
    sink._maintain()  # the open one too, once its first record is past retention
    assert list(tmp_path.glob("*.jsonl")) == [] and sink.total_bytes == 0
    sink.write_lines([line(3)])
    assert on_disk(tmp_path) == 200


def test_files_left_by_an_earlier_run_count_towards_the_budget(tmp_path: Path) -> None:
    clock = Clock()
    first = JsonlSink(tmp_path, max_bytes=1024, max_total_bytes=4096, clock=clock)
    first.write_lines([line(i) for i in range(15)])
    first._close_file()
    clock.now += 10
    second = JsonlSink(tmp_path, max_bytes=1024, max_total_bytes=4096, clock=clock)
    second.write_lines([line(100 + i) for i in range(10)])
    assert on_disk(tmp_path) <= 4096 and second.deleted_files >= 1


def test_writers_sharing_a_directory_name_their_own_files(tmp_path: Path) -> None:
    clock = lambda: 1_700_000_000.0  # noqa: E731 - the same instant for both writers
    first = JsonlSink(tmp_path, clock=clock, suffix="-w0")
    second = JsonlSink(tmp_path, clock=clock, suffix="-w1")
    first.write_lines([b'{"w":0}\n'])
    second.write_lines([b'{"w":1}\n'])
    names = sorted(p.name for p in tmp_path.glob("samples-*.jsonl"))
    assert names == [
        "samples-20231114T221320.000000Z-w0.jsonl",
        "samples-20231114T221320.000000Z-w1.jsonl",
    ]


def test_a_writer_counts_and_deletes_only_its_own_files(tmp_path: Path) -> None:
    clock = Clock()
    other = JsonlSink(tmp_path, clock=clock, suffix="-w1")
    other.write_lines([line(0, 1000)])
    other._close_file()
    mine = JsonlSink(tmp_path, max_bytes=300, max_total_bytes=600, clock=clock, suffix="-w0")
    for i in range(1, 10):
        clock.now += 1
        mine.write_lines([line(i)])
    assert mine.total_bytes <= 600
    assert len(list(tmp_path.glob("samples-*-w1.jsonl"))) == 1  # the other writer's file stays
    assert mine.status()["bytes"] == on_disk(tmp_path) - 1000
