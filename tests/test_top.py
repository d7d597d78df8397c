"""`guardproxy top`: the table from a live admin port, and what it says when there is none."""

from __future__ import annotations

import asyncio
import io

import pytest

from guardproxy.testing import RunningProxy
from guardproxy.top import CLEAR, render, top

DOC = {
    "generated_at": 0.0,
    "models": [
        {
            "region": "sg", "model": "fraud", "version": "3", "score": 100.0,
            "state": "critical", "breaker": "open",
            "problems": [{"kind": "breaker", "severity": 100, "text": "breaker open: tripped"}],
            "outcomes": {"recent": {"decided": 8, "error": 2}, "rates": {"error": 0.2}},
            "fairness": {"labels": 12},
        },
        {
            "region": "sg", "model": "credit", "version": "", "score": 0.0,
            "state": "ok", "breaker": "closed", "problems": [], "outcomes": {}, "fairness": {},
        },
    ],
}  # fmt: skip


def test_render_puts_each_model_on_a_line_with_its_reasons() -> None:
    lines = render(DOC, 200, "http://a:9901").splitlines()
    assert "2 models, 1 critical" in lines[0]
    assert lines[2].split()[:3] == ["STATE", "SCORE", "MODEL"]
    assert lines[3].split()[:6] == ["critical", "100", "sg/fraud@3", "open", "10", "0%"]
    assert lines[3].endswith("breaker open: tripped") and lines[4].endswith("-")
    assert all(len(line) <= 40 for line in render(DOC, 40).splitlines())


async def test_top_once_reads_a_running_proxy(proxy: RunningProxy) -> None:
    out = io.StringIO()
    code = await asyncio.to_thread(top, proxy.admin_url, 0, True, out)
    assert code == 0 and "default/adult" in out.getvalue() and CLEAR not in out.getvalue()


def test_top_once_fails_clearly_without_an_admin_port(capsys: pytest.CaptureFixture[str]) -> None:
    assert top("http://127.0.0.1:1", once=True) == 1
    assert "cannot read http://127.0.0.1:1/status/models" in capsys.readouterr().err


def test_top_refreshes_until_interrupted() -> None:
    out, calls = io.StringIO(), []

    def sleep(seconds: float) -> None:
        calls.append(seconds)
        if len(calls) == 2:
            raise KeyboardInterrupt

    assert top("http://127.0.0.1:1", interval=0.5, out=out, sleep=sleep) == 0
    assert calls == [0.5, 0.5] and out.getvalue().count(CLEAR) == 2
