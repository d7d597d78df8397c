"""The building blocks of the policy schema: strict frozen models, durations, rates."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object) -> object:
    """Turn "250ms", "60s", "5m", "1h", "7d" or a number of seconds into float seconds."""
    if isinstance(value, bool):  # pydantic would take True as 1.0 seconds
        raise ValueError(f"not a duration: {value!r} (expected e.g. 250ms, 60s, 5m, 1h, 7d)")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f"not a duration: {value!r} (expected e.g. 250ms, 60s, 5m, 1h, 7d)")
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return value


MAX_DURATION = 366 * 86400.0  # a year: past it, a wait is a mistake (and 1e308 s overflows)
Duration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0, le=MAX_DURATION)]
Rate = Annotated[float, Field(ge=0.0, le=1.0)]
Protocol = Literal["kserve_v2", "tfserving", "mlflow", "seldon_v1", "openai", "jsonpath"]
OnError = Literal["fail_open", "fail_closed"]


class Strict(BaseModel):
    """Base for every policy section: immutable, unknown keys and non-finite numbers are
    errors (an infinite score range made every learned threshold NaN)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
