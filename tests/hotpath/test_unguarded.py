"""unguarded: paths no model guards, passed to the upstream or refused, with what may pass."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from pydantic import ValidationError

from guardproxy.policy.models import UnguardedSpec
from guardproxy.testing import RunningProxy, proxy_before

POLICIES = {
    "default.yaml": "region: default\nmodels: [{name: chat, protocol: openai}]\n",
    "strict.yaml": (
        "region: strict\nextends: default\n"
        "unguarded: {action: refuse, allow: [/health, '/v1/models/**']}\n"
    ),
}
STRICT = {"X-Region": "strict"}


class Upstream:
    """Answers every path with 200 and its path; remembers what reached it."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.answer)
        return app

    async def answer(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        if request.path == "/v1/chat/completions":
            choice = {"index": 0, "message": {"role": "assistant", "content": "hello"}}
            return web.json_response({"choices": [choice]})
        return web.json_response({"path": request.path})


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[RunningProxy, Upstream]]:
    upstream = Upstream()
    async with proxy_before(
        upstream.app(), tmp_path, POLICIES, trust_region_header="X-Region"
    ) as p:
        yield p, upstream


async def status_of(
    proxy: RunningProxy, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, object]]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, proxy.url + path, headers=headers, json={}) as r,
    ):
        return r.status, await r.json()


async def test_by_default_a_path_no_model_guards_passes(
    served: tuple[RunningProxy, Upstream],
) -> None:
    proxy, upstream = served
    assert (await status_of(proxy, "POST", "/generate"))[0] == 200
    assert upstream.paths == ["/generate"] and proxy.runtime.proxy.counts.unguarded == 1


async def test_a_region_that_refuses_answers_404_and_the_model_is_never_asked(
    served: tuple[RunningProxy, Upstream],
) -> None:
    proxy, upstream = served
    for path in ("/generate", "/api/embed", "/health/../generate", "/healthz",
                 "/health%2F..%2Fgenerate", "/v1/model"):  # fmt: skip
        status, doc = await status_of(proxy, "POST", path, STRICT)
        assert (status, doc["error"]) == (404, "no guarded model serves this path"), path
    assert upstream.paths == []
    counts = proxy.runtime.proxy.counts
    assert (counts.unguarded_refused, counts.refused[404], counts.unguarded) == (6, 6, 0)
    assert proxy.runtime.status()["requests"]["unguarded_refused"] == 6  # type: ignore[index]


async def test_what_the_region_allows_passes_and_guarded_routes_are_guarded(
    served: tuple[RunningProxy, Upstream],
) -> None:
    proxy, upstream = served
    for path in ("/health", "/v1/models/m", "/v1/models/m/"):
        assert (await status_of(proxy, "GET", path, STRICT))[0] == 200, path
    status, doc = await status_of(proxy, "POST", "/v1/chat/completions", STRICT)
    assert status == 200 and doc["choices"]
    assert upstream.paths == ["/health", "/v1/models/m", "/v1/models/m/", "/v1/chat/completions"]
    assert proxy.runtime.proxy.counts.guarded == 1


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"allow": ["/health"]}, "only with unguarded.action: refuse"),
        ({"action": "refuse", "allow": ["health"]}, "must start with /"),
        ({"action": "refuse", "allow": ["/a/../b"]}, "can never match"),
        ({"action": "drop"}, "'pass' or 'refuse'"),
    ],
)
def test_an_allow_list_needs_refuse_and_routes_a_path_can_match(
    spec: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        UnguardedSpec.model_validate(spec)
