"""The same behaviour on uvloop, the loop guardproxy runs on (its transports differ)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from guardproxy.testing import serving, upstream_app

from . import test_client as client
from . import test_client_failures as failures
from . import test_proxy as proxy
from . import test_server as server
from . import test_server_limits as limits
from .support import port_of

uvloop = pytest.importorskip("uvloop")

Case = Callable[[], Awaitable[None]]


def with_upstream(case: Callable[[int], Awaitable[None]]) -> Case:
    """Run a case that takes the shared test upstream's port."""

    async def run() -> None:
        async with serving(upstream_app()) as url:
            await case(port_of(url))

    return run


CASES: dict[str, Case] = {
    "pipelining": server.test_three_pipelined_requests_in_one_packet_are_answered_in_order,
    "chunked": server.test_chunked_request_and_chunked_response,
    "continue": server.test_expect_100_continue_is_answered_when_the_body_is_asked_for,
    "abort": server.test_handler_errors_give_500_json_or_abort,
    "431": lambda: limits.test_head_over_the_limit_gets_431(40),
    "smuggling": lambda: limits.test_smuggling_and_malformed_requests_get_400_and_close(
        limits.SMUGGLING["cl-and-te"]
    ),
    "slow-body": limits.test_slow_body_is_timed_out_with_408,
    "paused-body": limits.test_a_paused_body_is_not_timed_out_while_the_handler_is_behind,
    "idle": limits.test_idle_keep_alive_connections_are_closed,
    "early-answer": limits.test_a_large_early_answer_survives_an_upload_still_going_on,
    "write-timeout": limits.test_a_client_that_stops_reading_is_cut_off_after_the_write_timeout,
    "shutdown": limits.test_shutdown_drains_in_flight_requests_and_closes_idle_ones,
    "retry": failures.test_a_reused_connection_closed_before_answering_is_retried_once_fresh,
    "reset": failures.test_reset_mid_answer_fails_the_body,
    "close-delimited": failures.test_interim_answers_skipped_close_delimited_body_ends_at_close,
    "slow-key": client.test_a_slow_key_does_not_block_another_key,
    "mlserver": proxy.test_upstream_dropping_connections_after_errors_costs_no_good_request,
    "sse": proxy.test_server_sent_events_arrive_one_by_one_as_written,
    "502-504": with_upstream(proxy.test_upstream_failures_become_502_and_504),
    "continue-proxy": with_upstream(proxy.test_chunked_head_and_continue_pass_through),
    "50mb-proxy": with_upstream(proxy.test_fifty_megabytes_each_way_with_bounded_memory),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_on_uvloop(case: Case) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(case())  # type: ignore[arg-type]
