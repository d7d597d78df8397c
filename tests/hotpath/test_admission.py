"""Admission: breaker verdicts applied to exchanges, and the fallback pools."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from guardproxy.breaker.board import BreakerBoard
from guardproxy.breaker.state import Admission
from guardproxy.guards.exchange import Exchange
from guardproxy.hotpath.admission import Fallbacks, mark
from guardproxy.hotpath.upstream import Timeouts
from guardproxy.policy.thresholds import Snapshot
from guardproxy.testing import serving, upstream_app
from tests.breaker.tables import table


def test_mark_annotates_and_flags_for_sampling() -> None:
    board = BreakerBoard(Snapshot(table(sg={})))
    breaker = board.breaker("sg", "fraud")
    assert breaker is not None
    breaker.force("forced_open", "t")
    ex = Exchange("r", "sg", "fraud", "POST", "/", CIMultiDictProxy(CIMultiDict[str]()), b"", 0.0)
    mark(ex, breaker, Admission.OPEN, fallback=True)
    assert ex.annotations == {"X-Guard-Breaker": "forced_open", "X-Guard-Upstream": "fallback"}
    assert ex.flags == ["breaker:open", "breaker:fallback"]


async def test_fallback_pools_follow_the_lifecycle_and_policy_swaps() -> None:
    async with serving(upstream_app()) as url:
        fallback = {"open": {"action": "fallback", "upstream": url}}
        snapshot = Snapshot(table(sg=fallback))
        board = BreakerBoard(snapshot)
        pools = Fallbacks(Timeouts())
        pools.follow(snapshot.current)
        board.table_listeners.append(pools.follow)
        breaker = board.breaker("sg", "fraud")
        assert breaker is not None and pools.get(breaker) is None  # not started
        await pools.start()
        pool = pools.get(breaker)
        assert pool is not None
        async with pool.session.get(pool.url_for("/status/200")) as response:
            assert response.status == 200
        snapshot.publish(table(sg={}))
        board.tick()
        assert pools.pools == {} and pools.status() == {}
        await pools.stop()
        assert pool._session is None
