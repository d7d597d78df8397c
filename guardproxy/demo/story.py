"""`guardproxy demo`: the bundled Adult model behind the proxy, labels, fairer thresholds."""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from guardproxy.app import RunningProxy, running_proxy
from guardproxy.demo.model import adult_rows
from guardproxy.demo.server import build_model_app, v2_request
from guardproxy.eventloop import run_async
from guardproxy.policy.thresholds import ModelKey, ThresholdRule
from guardproxy.settings import Settings
from guardproxy.testing import serving

INFER = "/v2/models/adult/infer"
FEEDBACK_TOKEN = "demo-feedback-token"
# A fixed key makes the randomized thresholds draw alike on every run, so the demo's figures
# repeat; a real deployment sets its own secret (GUARDPROXY_DECISION_KEY) or lets one be made.
DEMO_DECISION_KEY = "guardproxy-demo-decision-key"


@dataclass
class Phase:
    """One replay: each row's group, decision and true label, and the latencies."""

    name: str
    rows: list[tuple[str, int, int]] = field(default_factory=list)  # (group, decision, label)
    statuses: Counter[int] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)

    def rate(self, group: str, label: int | None = None) -> float:
        """Share of positive decisions in a group (among rows with that label if given)."""
        picked = [d for g, d, y in self.rows if g == group and (label is None or y == label)]
        return sum(picked) / len(picked) if picked else float("nan")

    def accuracy(self) -> float:
        """Share of decisions equal to the true label."""
        return sum(d == y for _, d, y in self.rows) / len(self.rows)

    def equal_opportunity_difference(self) -> float:
        """Largest gap in true positive rate between groups."""
        tprs = [self.rate(g, 1) for g in self.groups()]
        return max(tprs) - min(tprs)

    def groups(self) -> list[str]:
        """The groups seen."""
        return sorted({g for g, _, _ in self.rows})


async def replay(
    session: aiohttp.ClientSession, url: str, rows: list[dict[str, str]], phase: Phase
) -> None:
    """Send each row as its own KServe v2 inference request, 8 at a time."""
    gate = asyncio.Semaphore(8)

    async def one(row: dict[str, str]) -> None:
        request_id = f"{phase.name}-{len(phase.request_ids):05d}"
        phase.request_ids.append(request_id)
        async with gate:
            began = time.perf_counter()
            headers = {"X-Request-Id": request_id}
            async with session.post(url + INFER, json=v2_request([row]), headers=headers) as r:
                await r.read()
            phase.latencies_ms.append((time.perf_counter() - began) * 1000)
        phase.statuses[r.status] += 1
        decision = int(r.headers.get("X-Guard-Decision", "0"))
        phase.rows.append((row["sex"], decision, int(row["income"])))

    await asyncio.gather(*(one(row) for row in rows))


async def send_labels(
    session: aiohttp.ClientSession, url: str, ids: list[str], rows: list[dict[str, str]]
) -> dict[str, int]:
    """The label pipeline, later: one NDJSON post of {request_id, label} lines."""
    lines = "\n".join(
        json.dumps({"request_id": i, "label": int(r["income"])})
        for i, r in zip(ids, rows, strict=True)
    )
    headers = {"Authorization": f"Bearer {FEEDBACK_TOKEN}", "Content-Type": "application/x-ndjson"}
    async with session.post(f"{url}/guardproxy/v1/feedback", data=lines, headers=headers) as r:
        totals: dict[str, int] = (await r.json())["totals"]
    return totals


async def recalibrate(
    proxy: RunningProxy, key: ModelKey = ("default", "adult", ""), steps: int = 20
) -> list[str]:
    """Run the engine's calibration until it settles (each step moves at most max_step)."""
    engine, lines = proxy.runtime.engine, []
    for _ in range(steps):
        result = await engine.calibrate(key, reason="demo")
        rules = proxy.runtime.thresholds.current.rules
        shown = ", ".join(
            f"{k[3]}={describe_rule(r)}" for k, r in sorted(rules.items()) if k[:3] == key
        )
        lines.append(f"  {result.status:<9} {result.version:<18} {shown or result.reason}")
        if result.status != "published":
            break
    return lines


def describe_rule(rule: ThresholdRule) -> str:
    """A threshold, or a mix of two ("low|high@p_high", as equal rates may need)."""
    if rule.high is None or rule.p_high <= 0.0:
        return f"{rule.low:.3f}"
    return f"{rule.low:.3f}|{rule.high:.3f}@{rule.p_high:.2f}"


def describe(phase: Phase) -> list[str]:
    """Per-group selection rate and TPR, the gap, accuracy."""
    lines = [f"{phase.name}: {sum(phase.statuses.values())} requests {dict(phase.statuses)}, "
             f"p50 {statistics.median(phase.latencies_ms):.2f} ms"]  # fmt: skip
    for group in phase.groups():
        lines.append(
            f"  {group:<7} selection_rate={phase.rate(group):.3f} "
            f"true_positive_rate={phase.rate(group, 1):.3f}"
        )
    lines.append(
        f"  equal_opportunity_difference={phase.equal_opportunity_difference():.3f} "
        f"accuracy={phase.accuracy():.3f}"
    )
    return lines


@dataclass
class StoryResult:
    """What the demo measured, for the printout and for tests."""

    before: Phase
    after: Phase
    feedback: dict[str, int]
    calibration: list[str]
    status: dict[str, Any]


async def fairness_story(proxy: RunningProxy, rows: list[dict[str, str]]) -> StoryResult:
    """Serve half the rows, learn from their labels, serve the other half under new thresholds."""
    half = len(rows) // 2
    before, after = Phase("before"), Phase("after")
    async with aiohttp.ClientSession() as session:
        await replay(session, proxy.url, rows[:half], before)
        await proxy.runtime.worker.flush()  # predictions recorded off the hot path first
        feedback = await send_labels(session, proxy.url, before.request_ids, rows[:half])
        calibration = await recalibrate(proxy)
        await replay(session, proxy.url, rows[half:], after)
        async with session.get(f"{proxy.admin_url}/status") as response:
            status = await response.json()
    return StoryResult(before, after, feedback, calibration, status)


def demo_settings(upstream: str, scratch: Path) -> Settings:
    """The proxy on free loopback ports, the embedded default policy, memory state."""
    return Settings(
        upstream=upstream,
        listen=("127.0.0.1", 0),
        admin=("127.0.0.1", 0),
        samples_dir=scratch / "samples",
        feedback_token=FEEDBACK_TOKEN,
        decision_key=DEMO_DECISION_KEY,
        decision_key_source="demo",
    )


def report(result: StoryResult, samples: Path) -> str:
    """The demo's printout."""
    fairness = result.status["fairness"]
    written = sum(1 for p in samples.glob("*.jsonl") for _ in p.open())
    lines = [
        *describe(result.before),
        f"labels posted later to /guardproxy/v1/feedback: {result.feedback}",
        "threshold calibration (equal_opportunity, at most max_step per step):",
        *result.calibration,
        *describe(result.after),
        f"threshold table in force: {fairness.get('thresholds', {}).get('version', '-')}",
        f"review samples written (redacted JSONL, stratified by group): {written}",
        *breaker_lines(result.status),
    ]
    return "\n".join(lines)


def breaker_lines(status: dict[str, Any]) -> list[str]:
    """Each model's circuit breaker: state and why."""
    models = status.get("breakers", {}).get("models", {})
    return [
        f"circuit breaker {name}: {b['state']}" + (f" ({b['reason']})" if b.get("reason") else "")
        for name, b in models.items()
    ]


async def story(requests: int) -> int:
    """Start the model and the proxy, tell the whole story, print it."""
    rows = list(adult_rows())[:requests]
    with tempfile.TemporaryDirectory(prefix="guardproxy-demo-") as scratch:
        async with serving(build_model_app()) as model_url:
            settings = demo_settings(model_url, Path(scratch))
            async with running_proxy(settings) as proxy:
                print(
                    f"model server {model_url} <- guardproxy {proxy.url} (admin {proxy.admin_url})"
                )
                result = await fairness_story(proxy, rows)
            print(report(result, settings.samples_dir))
    ok = set(result.before.statuses) | set(result.after.statuses) == {200}
    print("demo finished" if ok else "demo finished with errors")
    return 0 if ok else 1


def run(requests: int = 3000) -> int:
    """Run the demo story on a fresh event loop."""
    result: list[int] = []

    async def main() -> None:
        result.append(await story(requests))

    run_async(main())
    return result[0]
