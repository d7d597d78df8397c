"""The upstream: credentials in its URL sent as Basic authorization, never shown; fixed errors."""

from __future__ import annotations

import base64

import aiohttp
import pytest

from guardproxy.hotpath.upstream import Upstream, client_message
from guardproxy.testing import proxy_settings, running_proxy
from guardproxy.transport import UpstreamError


async def test_credentials_in_the_url_reach_the_upstream_and_nothing_else(
    upstream_url: str, client: aiohttp.ClientSession
) -> None:
    upstream = upstream_url.replace("http://", "http://svc:p%40ss-word-77@")
    async with running_proxy(proxy_settings(upstream)) as proxy:
        headers = {"Authorization": "Bearer from-the-client"}
        async with client.get(f"{proxy.url}/echo", headers=headers) as response:
            echo = await response.json()
        async with client.get(f"{proxy.admin_url}/status") as response:
            status = await response.text()
    sent = [v for k, v in echo["headers"] if k.lower() == "authorization"]
    assert sent == ["Basic " + base64.b64encode(b"svc:p@ss-word-77").decode()]
    assert "p%40ss-word-77" not in status and "http://***@127.0.0.1" in status


def test_a_url_the_pool_cannot_serve_is_refused_without_its_credentials() -> None:
    with pytest.raises(ValueError, match=r"https://\*\*\*@model") as refused:
        Upstream("https://svc:secret-pw-1@model:8443")
    assert "secret-pw-1" not in str(refused.value)


REFUSED = "upstream unreachable: Connect call failed ('10.0.0.7', 80)"
BUSY = "too many requests waiting for the upstream"


@pytest.mark.parametrize(
    ("kind", "message", "told"),
    [
        ("refused", REFUSED, "upstream unreachable"),  # no address for the client
        ("timeout_read", "upstream timed out", "upstream timed out"),
        ("reset", "upstream closed the connection mid-answer", "upstream closed the connection"),
        ("busy", BUSY, BUSY),  # the transport's own fixed text
    ],
)
def test_a_client_is_told_fixed_text(kind: str, message: str, told: str) -> None:
    assert client_message(UpstreamError(502, kind, message)) == told
