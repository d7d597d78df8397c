"""Micro-benchmark: what the access log costs a request, off and on.

    .venv/bin/python -m bench.access_log [--records 5000]

Off (the default), a request pays for one level check. On, the event loop builds a record
and hands it to the log writer thread, which formats a JSON line and writes it (here to
/dev/null); "process CPU" adds the writer's share. Prints µs per request.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

from guardproxy.logs import AccessLog, configure_logging, dropped, stop_logging

ARGS = ("POST", "/v2/models/adult/infer?x=1", 200, 0.0031, 118, "4be1c0", "default", "adult")


def per_record(access: AccessLog, records: int) -> tuple[float, float]:
    """(event-loop µs, process CPU µs) per record, the writer's final flush included."""
    began, cpu = time.perf_counter(), time.process_time()
    for _ in range(records):
        access.record(*ARGS, "decided")
    caller = time.perf_counter() - began
    stop_logging()
    return caller / records * 1e6, (time.process_time() - cpu) / records * 1e6


def main(argv: list[str] | None = None) -> int:
    """Print the cost of the access log off and on."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=5000)
    args = parser.parse_args(argv)
    with open(os.devnull, "w", encoding="utf-8") as sink:
        for label, enabled in (("off", False), ("on, json", True)):
            configure_logging(logging.INFO, "json", stream=sink)
            caller, cpu = per_record(AccessLog(enabled), args.records)
            print(f"access log {label:8}: {caller:6.2f} µs on the loop, {cpu:6.2f} µs process CPU")
    print(f"records dropped: {dropped()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
