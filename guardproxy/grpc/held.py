"""What a parsed inference request holds in memory, counted against the proxy's body budget.

gRPC hands the proxy a message whole, and the proxy parses it (protobuf, upb) to read its
model, id and tensors; both stay until the call (or, in a stream, the message's answer) ends.
The parse can be far larger than the bytes: each packed value takes its in-memory size, twice
while the arrays grow, and each string entry a view of its own. Measured for 15 MiB messages:
INT64 zeros +248 MiB, INT32 +124 MiB, empty BYTES or raw entries +248 MiB, one raw tensor
+15 MiB. So a call holds the budget (`--max-buffered`, shared with the HTTP path's bodies) for
its bytes plus that estimate, and one that does not fit is refused RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

from typing import Any

import grpc

from ..hotpath.bodies import BUDGET_FULL, UNCOUNTED, BodyBudget, BodyHold, BudgetFull
from .hooks import Refuse

__all__ = ["BUDGET_REFUSAL", "held_bytes", "hold", "room_for"]

# Bytes a parsed value takes in memory, by InferTensorContents field (a string: its view).
_VALUE = {
    "bool_contents": 1,
    "int_contents": 4,
    "uint_contents": 4,
    "fp32_contents": 4,
    "int64_contents": 8,
    "uint64_contents": 8,
    "fp64_contents": 8,
    "bytes_contents": 32,
}
_ENTRY = 32  # a raw contents entry's view
BUDGET_REFUSAL = Refuse(grpc.StatusCode.RESOURCE_EXHAUSTED, BUDGET_FULL, retry_after=1.0)


def held_bytes(message: Any, wire: int) -> int:
    """What a request of `wire` bytes holds once parsed: the bytes, their parse, and twice
    the in-memory size of its repeated values (arrays double as they grow)."""
    size = 2 * wire + 2 * _ENTRY * len(message.raw_input_contents)
    for tensor in message.inputs:
        if tensor.HasField("contents"):
            contents = tensor.contents
            size += 2 * sum(len(getattr(contents, name)) * each for name, each in _VALUE.items())
    return size


def room_for(budget: BodyBudget | None, wire: int) -> bool:
    """Whether a request of `wire` bytes may be parsed: its bytes twice, the least its parse
    holds, fit in what is left (a parse refused after the fact still took its memory)."""
    if budget is None or budget.reserved == 0:
        return True
    return budget.reserved + max(0, 2 * wire - UNCOUNTED) <= budget.limit


def hold(budget: BodyBudget | None, size: int) -> BodyHold | None:
    """A hold of `size` bytes of the budget (None without one); BudgetFull when they do not fit.

    A request larger than the whole budget holds all of it: it runs alone, never refused
    outright (the HTTP path's budget is never below one body).
    """
    if budget is None:
        return None
    held = BodyHold(budget)
    try:
        held.grow(min(size, budget.limit))
    except BudgetFull:
        held.release()
        raise
    return held
