"""The observation handed to the monitors: its pieces, and the rows the drift windows take."""

from __future__ import annotations

from guardproxy.guards.exchange import Verdict
from guardproxy.hotpath.observation import Observation
from tests.factories import compiled_model, observation


def batch(rows: int) -> Observation:
    verdicts = tuple(Verdict("*", i / rows, 0.5, 0) for i in range(rows))
    ob = observation(compiled_model(), verdicts=verdicts, features=(tuple(range(rows)),))
    return ob._replace(request_rows=rows)


def test_a_request_within_the_limit_is_taken_whole() -> None:
    ob = batch(5)
    assert ob.spread(5) is ob and batch(1).spread(1) is not None


def test_a_large_request_gives_evenly_spaced_rows_across_its_pieces() -> None:
    pieces, rest = [], batch(1000)
    while len(rest.verdicts) > 256:  # as the monitor worker takes it, 256 rows a step
        head, rest = rest.split(256)
        pieces.append(head)
    pieces.append(rest)
    shares = [piece.spread(10) for piece in pieces]
    kept = [row for share in shares if share is not None for row in share.features[0]]
    assert kept == list(range(0, 1000, 100))
    assert [len(s.verdicts) if s else 0 for s in shares] == [3, 3, 2, 2]


def test_a_probe_is_one_row_of_its_request() -> None:
    head, rest = batch(300).split(256)
    first, later = head.spread(1), rest.spread(1)
    assert first is not None and first.features == ((0,),) and later is None
