"""The flags of `guardproxy serve`: one table for the parser, `--help` and the README.

Every flag also reads GUARDPROXY_<FLAG> from the environment; a flag on the command line wins.
A bad value, from either, is a one-line error naming both.
"""

from __future__ import annotations

import argparse
import math
import os
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from guardproxy.logs import parse_format, parse_level

SWITCH_ON = ("1", "true", "yes", "on")
SWITCH_OFF = ("", "0", "false", "no", "off")


def seconds(text: str) -> float:
    """A duration in seconds, greater than zero."""
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise ValueError("expected a number of seconds above 0")
    return value


def wait(text: str) -> float:
    """A duration in seconds, zero or more."""
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError("expected a number of seconds, 0 or more")
    return value


def rate(text: str) -> float:
    """A rate per second, zero or more."""
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError("expected a number per second, 0 or more")
    return value


def size(text: str) -> int:
    """A size in bytes, greater than zero."""
    value = int(text)
    if value <= 0:
        raise ValueError("expected a number of bytes above 0")
    return value


def count(text: str) -> int:
    """A whole number above zero."""
    value = int(text)
    if value <= 0:
        raise ValueError("expected a whole number above 0")
    return value


def address(text: str) -> str:
    """HOST:PORT, :PORT or PORT with a port up to 65535, kept as written for parse_address."""
    port = text.rpartition(":")[2]
    if not port.isdigit() or int(port) > 65535:
        raise ValueError("expected HOST:PORT, :PORT or PORT (a port from 0 to 65535)")
    return text


STREAM_ANSWERS = ("auto", "triton", "mlserver")


def stream_answers(text: str) -> str:
    """auto, triton or mlserver, in any case; else ValueError."""
    value = text.strip().lower()
    if value not in STREAM_ANSWERS:
        raise ValueError(
            f"unknown stream answer format {text!r}: expected auto, triton or mlserver"
        )
    return value


def count_or_zero(text: str) -> int:
    """A whole number, zero or more."""
    value = int(text)
    if value < 0:
        raise ValueError("expected a whole number, 0 or more")
    return value


def level_name(text: str) -> str:
    """A log level in any case, as its lower-case name."""
    parse_level(text)
    return text.strip().lower()


def switch(text: str) -> bool:
    """An on/off value: 1, true, yes, on (any case) or 0, false, no, off, empty."""
    value = text.strip().lower()
    if value in SWITCH_ON:
        return True
    if value in SWITCH_OFF:
        return False
    raise ValueError("expected true or false (1/0, yes/no, on/off)")


@dataclass(frozen=True, slots=True)
class Flag:
    """One serve flag: its name, the value it stands for, help, and built-in default."""

    name: str
    metavar: str | None  # None: an on/off switch that takes no value
    help: str
    default: str = ""  # as the environment would spell it; "" means unset
    shown: str = ""  # the default as --help and the README show it, when not `default`
    parse: Callable[[str], Any] = str
    required: bool = False

    @property
    def env(self) -> str:
        """The environment variable that sets it."""
        return "GUARDPROXY_" + self.name.removeprefix("--").upper().replace("-", "_")

    @property
    def dest(self) -> str:
        """The attribute of the parsed arguments."""
        return self.name.removeprefix("--").replace("-", "_")

    @property
    def default_text(self) -> str:
        """The default in words: a literal value, or what happens when it is unset."""
        return "(required)" if self.required else self.shown or self.default

    @property
    def help_text(self) -> str:
        """The help --help shows: what it does, its variable, its default."""
        default = "required" if self.required else f"default: {self.default_text}"
        return f"{self.help} (env {self.env}; {default})"

    def checked(self, text: str) -> Any:
        """The value parsed, or an argparse error that names the flag and its variable."""
        try:
            return self.parse(text)
        except ValueError as exc:
            reason = str(exc) if self.parse is not str else "invalid value"
            raise argparse.ArgumentTypeError(
                f"{text!r} (from {self.name} or {self.env}): {reason}"
            ) from None


SERVE_FLAGS = (
    Flag(
        "--upstream",
        "URL",
        "the model server, http://HOST[:PORT][/PREFIX] (plain HTTP, as inside a pod); "
        "credentials in the URL are sent as Basic authorization",
        required=True,
    ),
    Flag("--policies", "DIR", "policy directory (a mounted ConfigMap)", shown="embedded default"),
    Flag("--listen", "HOST:PORT", "data port address", "0.0.0.0:8080", parse=address),
    Flag(
        "--admin",
        "HOST:PORT",
        "admin port address (worker i of --workers uses port + i)",
        "127.0.0.1:9901",
        parse=address,
    ),
    Flag(
        "--region",
        "R",
        "the pod's region, which serves every request unless a trusted header names another",
        "default",
    ),
    Flag(
        "--trust-region-header",
        "HEADER",
        "let this request header choose the region; set it only behind a gateway you "
        "control that sets or strips the header",
        shown="unset: the pod's --region serves every request",
    ),
    Flag(
        "--trust-forwarded",
        None,
        "keep clients' X-Forwarded-* headers (only behind a proxy that sets them)",
        "false",
        "off",
        parse=switch,
    ),
    Flag(
        "--state",
        "STATE",
        "memory, or redis://HOST:PORT/DB shared by replicas: prediction records, "
        "fairness counters, learned thresholds",
        "memory",
    ),
    Flag(
        "--samples",
        "DIR",
        "JSONL sample sink when the policy names none",
        "/tmp/guardproxy-samples",
    ),
    Flag("--connect-timeout", "S", "upstream connect timeout, seconds", "5", parse=seconds),
    Flag(
        "--read-timeout", "S", "upstream read timeout (between bytes), seconds", "60", parse=seconds
    ),
    Flag("--total-timeout", "S", "upstream whole-request timeout, seconds", "300", parse=seconds),
    Flag(
        "--upstream-concurrency",
        "N",
        "upstream requests at once per model, and for unguarded traffic",
        "64",
        parse=count,
    ),
    Flag(
        "--upstream-queue",
        "N",
        "requests per model waiting for a slot; beyond it (or after 10 s) 503",
        "256",
        parse=count_or_zero,
    ),
    Flag(
        "--header-timeout",
        "S",
        "a client's request head must arrive within this, else 408",
        "10",
        parse=seconds,
    ),
    Flag(
        "--body-timeout",
        "S",
        "longest silence while a client sends its body, else 408",
        "30",
        parse=seconds,
    ),
    Flag(
        "--body-min-rate",
        "BYTES/S",
        "bytes a second a body must average once it has taken --body-timeout (pauses while "
        "the proxy is not reading excluded), else 408; 0: no minimum",
        "1024",
        parse=rate,
    ),
    Flag(
        "--write-timeout",
        "S",
        "longest a client may leave an answer unread (its model's slot held meanwhile), "
        "else the connection is reset",
        "60",
        parse=seconds,
    ),
    Flag(
        "--drain-timeout",
        "S",
        "on SIGTERM, seconds allowed for in-flight requests to finish",
        "20",
        parse=wait,
    ),
    Flag(
        "--max-body",
        "BYTES",
        "largest body on a guarded route, request (413) or answer (502), as sent or decoded; "
        "also the feedback body, up to 2 MiB",
        str(16 << 20),
        "16777216 (16 MiB)",
        parse=size,
    ),
    Flag(
        "--max-buffered",
        "BYTES",
        "bytes of guarded bodies held at once (requests as they arrive, answers once read, "
        "until the client has read the answer), past each exchange's first 64 KiB, else 503 "
        "with Retry-After; never below --max-body, shared out among --workers",
        str(256 << 20),
        "268435456 (256 MiB)",
        parse=size,
    ),
    Flag(
        "--max-connections",
        "N",
        "client connections open at once on the data port, shared out among --workers; more "
        "are closed as soon as they are accepted; 0: no limit",
        "4096",
        parse=count_or_zero,
    ),
    Flag(
        "--max-connections-per-client",
        "N",
        "client connections open at once from one address, shared out among --workers; more "
        "are closed as soon as they are accepted; 0: no limit (behind a mesh proxy in the pod, "
        "every connection comes from one address)",
        "0",
        parse=count_or_zero,
    ),
    Flag(
        "--max-rows",
        "N",
        "most rows one guarded request or answer may carry, else 413 (each row holds the "
        "event loop ~1 µs)",
        "10000",
        parse=count,
    ),
    Flag("--workers", "N", "processes serving the data port (see Workers)", "1", parse=count),
    Flag(
        "--poll-interval",
        "S",
        "how often the policy directory is checked, seconds",
        "2",
        parse=seconds,
    ),
    Flag(
        "--log-level",
        "LEVEL",
        "debug, info, warning, error or critical, in any case",
        "info",
        parse=level_name,
    ),
    Flag(
        "--log-format",
        "FORMAT",
        "text, or json: one object per line with time, level, logger, message and fields",
        "text",
        parse=parse_format,
    ),
    Flag(
        "--access-log",
        None,
        "log every request at info level (else at debug)",
        "false",
        "off",
        parse=switch,
    ),
    Flag(
        "--otlp-endpoint",
        "URL",
        "OTLP collector (http/protobuf: /v1/traces and /v1/metrics are appended; grpc: used "
        "as is); OTEL_EXPORTER_OTLP_ENDPOINT works too",
        shown="none (no export)",
    ),
    Flag(
        "--service-name",
        "NAME",
        "service.name of traces and metrics; OTEL_SERVICE_NAME works too",
        shown="guardproxy",
    ),
    Flag(
        "--grpc-listen",
        "HOST:PORT",
        "the gRPC port (see the README's gRPC section); needs --grpc-upstream",
        shown="none (no gRPC port)",
    ),
    Flag(
        "--grpc-upstream",
        "HOST:PORT",
        "the model server's OIP gRPC port (HOST:PORT, not a URL)",
        shown="none",
    ),
    Flag(
        "--grpc-max-calls",
        "N",
        "gRPC calls (of every method and model) at once, 0 for no bound; more are refused "
        "RESOURCE_EXHAUSTED before their message is read (gRPC holds each, up to --max-body, "
        "before the proxy parses it and counts it in --max-buffered)",
        "0",
        parse=count_or_zero,
    ),
    Flag(
        "--grpc-stream-answers",
        "FORMAT",
        "how the model server sends ModelStreamInfer answers: triton (each wrapped in a "
        "ModelStreamInferResponse), mlserver (bare ModelInferResponse) or auto (told apart by "
        "each answer's fields); an answer of another form ends a stream with guarded requests",
        "auto",
        parse=stream_answers,
    ),
    Flag(
        "--grpc-stream-idle",
        "S",
        "a ModelStreamInfer stream that sends no request and waits for no answer for S seconds "
        "ends UNAVAILABLE (0: streams may idle for good)",
        "300",
        parse=wait,
    ),
)


def readme_table() -> str:
    """The README's table of serve flags, as Markdown (`python -m guardproxy.options`)."""
    rows = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    for flag in SERVE_FLAGS:
        name = f"{flag.name} {flag.metavar}" if flag.metavar else flag.name
        default = flag.default_text if flag.required or flag.shown else f"`{flag.default}`"
        meaning = flag.help.replace("|", "\\|")
        rows.append(f"| `{name}` | `{flag.env}` | {default} | {meaning} |")
    return "\n".join(rows)


class HelpFormatter(argparse.HelpFormatter):
    """argparse's help, wrapped at spaces only: a flag or variable name is never split."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(
            " ".join(text.split()), width, break_on_hyphens=False, break_long_words=False
        )


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add every serve flag, its default read from the environment, its help complete."""
    for flag in SERVE_FLAGS:
        text = flag.help_text
        value = os.environ.get(flag.env, flag.default)
        if flag.metavar is None:
            # A switch: present means on; otherwise its variable decides, checked when parsed.
            parser.add_argument(
                flag.name, action="store_const", const="true", default=value, help=text
            )
        else:
            parser.add_argument(
                flag.name, metavar=flag.metavar, default=value, type=flag.checked, help=text
            )


def switched(args: argparse.Namespace, name: str) -> bool:
    """The value of a switch flag (from the command line or its variable)."""
    flag = next(f for f in SERVE_FLAGS if f.name == name)
    try:
        return switch(getattr(args, flag.dest))
    except ValueError as exc:
        raise SystemExit(f"guardproxy serve: {flag.env}: {exc}") from None


if __name__ == "__main__":
    print(readme_table())
