"""The benchmark harness end to end in --quick mode, plus its pure parts."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import chat_run
from bench.instructions import counted
from bench.layout import make_layout
from bench.load import Body, lua_bytes, lua_request, lua_string, parse_result
from bench.processes import process_cpu_seconds, process_tree
from bench.report import Sample, format_table, summarize
from bench.run import binary_bodies, main, request_bodies, request_documents
from bench.soak import Point, report
from bench.targets import parse_targets
from guardproxy.payloads.binary import HEADER, decode_request


def sample(target: str, n: int, rps: float, p50: float = 1.0) -> Sample:
    """A sample with made-up numbers."""
    return Sample(target, n, rps, 0, 50.0, p50, p50 * 3)


def test_quick_run_with_the_python_load_generator(tmp_path: Path) -> None:
    output = tmp_path / "latest.json"
    affinity = os.sched_getaffinity(0)
    argv = ["--quick", "--load", "python", "--targets", "a,b", "--duration", "0.8",
            "--connections", "8", "--output", str(output)]  # fmt: skip
    assert main(argv) == 0
    assert os.sched_getaffinity(0) == affinity
    doc = json.loads(output.read_text())
    rows = {r["target"]: r for r in doc["rows"]}
    assert set(rows) == {"direct", "bare-aiohttp"}
    assert all(r["rps"] > 0 and r["cpu_us_per_request"] > 0 for r in rows.values())
    assert rows["direct"]["vs_direct"] == pytest.approx(1.0)
    assert rows["bare-aiohttp"]["vs_direct"] == pytest.approx(
        rows["bare-aiohttp"]["rps"] / rows["direct"]["rps"]
    )
    assert rows["bare-aiohttp"]["added_p50_ms"] is not None
    assert rows["bare-aiohttp"]["capacity_vs_direct"] > 0
    assert doc["meta"]["load_generator"] == "python"


def test_medians_and_ratios() -> None:
    samples = [sample("direct", n, r) for n, r in enumerate((900.0, 1000.0, 5000.0))]
    samples += [sample("bare-aiohttp", n, r, p50=1.5) for n, r in enumerate((400.0, 500.0, 450.0))]
    direct, bare = summarize(samples)
    assert direct.rps == 1000.0
    assert bare.vs_direct == pytest.approx(0.45)
    assert bare.vs_bare == pytest.approx(1.0)
    assert bare.added_p50_ms == pytest.approx(0.5)
    assert bare.capacity_vs_direct == pytest.approx(1.0)


def test_ratios_are_absent_without_their_baseline() -> None:
    (only,) = summarize([sample("nginx", 0, 800.0)])
    assert only.vs_direct is None and only.vs_bare is None and only.added_p99_ms is None
    assert only.capacity_vs_direct is None
    assert "nginx" in format_table([only]) and " - " in format_table([only])


def test_targets_are_parsed_and_nginx_is_dropped_when_missing() -> None:
    assert [t.name for t in parse_targets("a,c,e", nginx=False)] == ["direct", "guardproxy-guarded"]
    with pytest.raises(SystemExit, match="unknown"):
        parse_targets("a,z", nginx=True)


def test_layouts_split_the_two_cpus() -> None:
    shared, split = make_layout("shared", {0, 1}), make_layout("split", {0, 1})
    assert shared.load == {0} and shared.server == {1} and shared.upstream == {1}
    assert split.upstream == {0}
    assert not make_layout("split", {0}).server
    with pytest.raises(SystemExit):
        make_layout("diagonal", {0, 1})


def test_wrk_output_and_lua_quoting() -> None:
    result = parse_result('Running 1s test\n{"requests": 10, "seconds": 2.0, "errors": 0, '
                          '"p50_ms": 0.2, "p99_ms": 0.9}\n')  # fmt: skip
    assert result.rps == 5.0 and result.p99_ms == 0.9
    assert lua_string('{"a": [[1]]}') == '[=[{"a": [[1]]}]=]'
    with pytest.raises(RuntimeError, match="no result"):
        parse_result("wrk: connection refused")


def test_request_bodies_are_single_row_v2_requests() -> None:
    bodies = request_bodies(3)
    assert len(bodies) == 3 and len(set(bodies)) > 1
    doc = json.loads(bodies[0])
    assert {i["name"] for i in doc["inputs"]} >= {"sex", "age"}
    assert all(i["shape"] == [1] for i in doc["inputs"])


def test_cpu_time_of_this_process_tree() -> None:
    assert os.getpid() in process_tree(os.getpid())
    assert process_cpu_seconds(os.getpid()) > 0
    assert process_cpu_seconds(2**22 + 1) == 0.0


def test_the_spread_of_the_rounds_and_cpu_against_nginx_are_reported() -> None:
    samples = [sample("nginx", n, r) for n, r in enumerate((900.0, 1000.0, 1100.0))]
    samples.append(Sample("guardproxy-guarded", 0, 500.0, 0, 100.0, 1.0, 2.0))
    nginx, guarded = summarize(samples)
    assert nginx.rps_spread == pytest.approx(20.0) and nginx.cpu_spread == 0.0
    assert guarded.rps_spread == 0.0
    table = format_table([nginx, guarded])
    assert "CPU/nginx" in table and "2.00" in table.splitlines()[-1]  # 100 µs over 50 µs


def test_access_log_micro_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.access_log import main as access_log

    assert access_log(["--records", "50"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0].strip() for line in lines] == [
        "access log off", "access log on, json", "records dropped"
    ]  # fmt: skip


def test_binary_bodies_carry_the_json_requests_rows() -> None:
    [body] = binary_bodies(1)
    headers = body.all_headers()
    doc = decode_request(body.data, headers[HEADER]).doc
    assert doc["inputs"] == request_documents(1)[0]["inputs"]
    assert all(o["parameters"] == {"binary_data": True} for o in doc["outputs"])
    assert headers["Content-Type"] == "application/octet-stream"


def test_lua_literals_hold_any_bytes() -> None:
    assert lua_bytes(b'a"\\\r\n\x00\xff') == '"a\\034\\092\\013\\010\\000\\255"'
    body, headers = lua_request(Body(b"{}", (("X-A", "1"),)))
    assert body == "[[{}]]"
    assert headers == '{["Content-Type"] = "application/json", ["X-A"] = "1"}'
    assert lua_request(Body(b"\r\n\x01"))[0] == '"\\013\\010\\001"'  # ASCII, not text


def test_quick_run_of_the_binary_target(tmp_path: Path) -> None:
    output = tmp_path / "latest.json"  # wrk when installed: its Lua carries the binary bodies
    argv = ["--quick", "--load", "auto", "--targets", "g", "--duration", "0.8",
            "--connections", "4", "--output", str(output)]  # fmt: skip
    assert main(argv) == 0  # a request the upstream could not read would be an error
    doc = json.loads(output.read_text())
    assert [r["target"] for r in doc["rows"]] == ["guardproxy-binary"]
    assert doc["meta"]["probes"]["guardproxy-binary"]["guard_decision"] in ("0", "1")


def test_instructions_are_summed_over_every_thread_of_a_callgrind_report() -> None:
    report = (
        b"PID 12692: python -m guardproxy.cli serve\n"
        b"sending command status internal to pid 12692\n\n"
        b"  Totals:           Ir \n"
        b"   Th 1  4,531,607,018 \n"
        b"   Th 2     16,790,660 \n"
        b"   Th 5            498 \n"
    )
    assert counted(report) == 4_531_607_018 + 16_790_660 + 498
    assert counted(b"Error: Callgrind task with PID 1 not detected\n") == 0


def test_quick_chat_run_prices_a_streamed_event(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--events", "10", "--rounds", "1", "--duration", "1", "--connections", "2"]
    assert chat_run.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert {"direct", "guardproxy-unguarded", "guardproxy-guarded"} <= set(rows)
    assert all(float(values[0]) > 0 for values in rows.values())


def test_the_time_a_process_waited_for_a_cpu_is_read_from_the_kernel() -> None:
    # Two busy processes on one CPU: each waits, ready to run, while the other runs.
    spin = (
        "import os, time\nfrom bench.soak import cpu_wait_seconds\n"
        "end = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"
        "print(cpu_wait_seconds(os.getpid()))"
    )
    cpu = min(os.sched_getaffinity(0))
    busy = [
        subprocess.Popen(
            [sys.executable, "-c", spin],
            stdout=subprocess.PIPE,
            cwd=Path(__file__).parent.parent,
            preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
        )
        for _ in range(2)
    ]
    waited = [float(process.communicate()[0]) for process in busy]
    assert sum(waited) > 0.1


def test_the_soak_report_shows_each_readings_pauses_and_collections(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    points = [Point(100_000, 90.0, 0, 4.0, 100_000, 0, 700, 0, 0.9, 0.01, 1.1),
              Point(200_000, 91.8, 0, 22.3, 200_000, 0, 1_400, 3, 0.46, 0.02, 2.3)]  # fmt: skip
    opts = argparse.Namespace(requests=200_000, every=100_000, steady_from=300_000,
                              output=tmp_path / "soak.json")  # fmt: skip
    report(points, opts)
    last = capsys.readouterr().out.splitlines()[3].split()
    assert last[-7:] == ["0.46", "3", "of", "1,400", "2.0%", "2.3", "0"]
    assert json.loads(opts.output.read_text())["growth_percent"] == pytest.approx(2.0)
