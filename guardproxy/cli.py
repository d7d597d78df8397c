"""The composition root: `guardproxy serve | validate | calibrate | baseline | review | demo`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from guardproxy import __version__
from guardproxy.eventloop import run_async
from guardproxy.hotpath.upstream import Limits, Timeouts
from guardproxy.logs import LEVELS, configure_logging, parse_format, parse_level
from guardproxy.options import HelpFormatter, add_flags, switched
from guardproxy.policy.problems import Problem
from guardproxy.settings import (
    PortUnavailable,
    Settings,
    parse_address,
    secret_file,
    secret_from_env,
)

MIN_DECISION_KEY = 16
POLICIES_DO_NOT_LOAD = "the policies do not load, so nothing is served:"


def add_serve(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`guardproxy serve`: run the sidecar."""
    p = sub.add_parser(
        "serve",
        help="run the sidecar in front of a model server",
        description="Run the sidecar. Every flag also reads its GUARDPROXY_* variable; "
        "tokens come from GUARDPROXY_ADMIN_TOKEN and GUARDPROXY_FEEDBACK_TOKEN (or ..._FILE).",
        formatter_class=HelpFormatter,
    )
    add_flags(p)
    p.set_defaults(run=run_serve)


def settings_from(args: argparse.Namespace) -> Settings:
    """Flags (already defaulted from the environment) into Settings."""
    if not args.upstream:
        raise SystemExit("guardproxy serve: --upstream (or GUARDPROXY_UPSTREAM) is required")
    if not args.upstream.startswith("http://"):
        raise SystemExit(f"guardproxy serve: --upstream {args.upstream!r}: expected http://...")
    return Settings(
        upstream=args.upstream,
        listen=parse_address(args.listen, "0.0.0.0"),
        admin=parse_address(args.admin, "127.0.0.1"),
        policies=Path(args.policies) if args.policies else None,
        region=args.region,
        trust_region_header=args.trust_region_header or None,
        trust_forwarded=switched(args, "--trust-forwarded"),
        state=args.state,
        samples_dir=Path(args.samples),
        timeouts=Timeouts(args.connect_timeout, args.read_timeout, args.total_timeout),
        limits=Limits(args.upstream_concurrency, args.upstream_queue),
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        body_min_rate=args.body_min_rate,
        write_timeout=args.write_timeout,
        drain_timeout=args.drain_timeout,
        max_body=args.max_body,
        max_buffered=args.max_buffered,
        max_connections=args.max_connections,
        max_connections_per_client=args.max_connections_per_client,
        max_rows=args.max_rows,
        poll_interval=args.poll_interval,
        admin_token=secret_from_env("GUARDPROXY_ADMIN_TOKEN"),
        feedback_token=secret_from_env("GUARDPROXY_FEEDBACK_TOKEN"),
        admin_token_file=secret_file("GUARDPROXY_ADMIN_TOKEN"),
        feedback_token_file=secret_file("GUARDPROXY_FEEDBACK_TOKEN"),
        decision_key=decision_key(),
        otlp_endpoint=args.otlp_endpoint or None,
        service_name=args.service_name or None,
        workers=args.workers,
        access_log=switched(args, "--access-log"),
        grpc_max_calls=args.grpc_max_calls,
        grpc_stream_answers=args.grpc_stream_answers,
        grpc_stream_idle=args.grpc_stream_idle,
        **grpc_settings(args.grpc_listen, args.grpc_upstream),
    )


def grpc_settings(listen: str, upstream: str) -> dict[str, Any]:
    """The gRPC port's settings: both addresses or neither (SystemExit naming what is wrong)."""
    if not listen and not upstream:
        return {}
    if not listen or not upstream:
        raise SystemExit(
            "guardproxy serve: --grpc-listen and --grpc-upstream (GUARDPROXY_GRPC_LISTEN, "
            "GUARDPROXY_GRPC_UPSTREAM) go together: give both or neither"
        )
    if "/" in upstream:
        raise SystemExit(f"guardproxy serve: --grpc-upstream is HOST:PORT, not a URL: {upstream!r}")
    try:
        host, port = parse_address(upstream, "127.0.0.1")
        return {
            "grpc_listen": parse_address(listen, "0.0.0.0"),
            "grpc_upstream": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        }
    except ValueError as exc:
        raise SystemExit(f"guardproxy serve: {exc}") from None


def decision_key() -> str | None:
    """GUARDPROXY_DECISION_KEY (or _FILE); too short a key is refused, not silently weak."""
    key = secret_from_env("GUARDPROXY_DECISION_KEY")
    if key is not None and len(key) < MIN_DECISION_KEY:
        raise SystemExit(
            f"guardproxy serve: GUARDPROXY_DECISION_KEY must be at least {MIN_DECISION_KEY} "
            "characters (e.g. the output of: openssl rand -hex 32)"
        )
    return key


def run_serve(args: argparse.Namespace) -> int:
    """Serve until SIGTERM, then drain and exit 0."""
    settings = settings_from(args)
    configure_logging(LEVELS[args.log_level], args.log_format, settings.secrets())
    if settings.workers > 1:
        from guardproxy.workers import run_workers

        return run_workers(settings)
    from guardproxy.app import serve
    from guardproxy.grpc_port import GrpcUnavailable
    from guardproxy.policy.problems import PolicyError
    from guardproxy.sampling.sinks import SinkError
    from guardproxy.telemetry import TelemetryError

    try:
        run_async(serve(settings))
    except PolicyError as exc:
        raise SystemExit(f"guardproxy serve: {POLICIES_DO_NOT_LOAD}\n{exc}") from None
    except (GrpcUnavailable, PortUnavailable, SinkError, TelemetryError) as exc:
        raise SystemExit(f"guardproxy serve: {exc}") from None
    return 0


def add_validate(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`guardproxy validate DIR`."""
    p = sub.add_parser("validate", help="check a policy directory; exit 1 listing every problem")
    p.add_argument("directory")
    p.set_defaults(run=run_validate)


def run_validate(args: argparse.Namespace) -> int:
    """Exit 0 when every policy is valid, else print `file:line:column: problem` lines."""
    from guardproxy.policy.loader import format_problems, validate_directory

    problems = validate_directory(Path(args.directory)) or chain_problems(Path(args.directory))
    if problems:
        print(format_problems(problems))
        return 1
    print(f"{args.directory}: all policies valid")
    return 0


def chain_problems(directory: Path) -> list[Problem]:
    """What `serve` would refuse of valid policies: each model's guards built as serve builds
    them (a JSON path that does not compile passed validation, then stopped serve)."""
    from guardproxy.guards.chain import GuardContext, build_chain
    from guardproxy.policy.loader import load_directory
    from guardproxy.sampling.redact import Redactor

    loaded, context, problems = load_directory(directory), GuardContext(), []
    for region, policy in sorted(loaded.policies.items()):
        source = (loaded.sources.get(region) or (str(directory),))[-1]
        for model in policy.models:
            try:
                build_chain(region, model, "validate", context)
                sampling = model.sampling  # the chain builds its redactor only with a sink
                Redactor(sampling.redact, sampling.detectors, sampling.max_body_bytes)
            except Exception as exc:  # whatever serve would stop on
                problems.append(Problem(source, 0, 0, f"model {model.name!r}: {exc}"))
    return problems


def add_demo(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`guardproxy demo`."""
    p = sub.add_parser("demo", help="the whole story on the embedded default, no setup")
    p.add_argument("--requests", type=int, default=3000, help="Adult rows to replay")
    p.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """Start the bundled model, the proxy in front of it, replay traffic, report."""
    from guardproxy.demo.story import run

    code: int = run(requests=args.requests)
    return code


def add_calibrate(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`guardproxy calibrate`: fit per-group thresholds from a labeled CSV."""
    p = sub.add_parser("calibrate", help="fit per-group thresholds offline from a labeled CSV")
    p.add_argument("--data", required=True, help="CSV file with a header row")
    p.add_argument("--score", required=True, help="score column")
    p.add_argument("--label", required=True, help="label column (0/1, true/false, yes/no)")
    p.add_argument("--group", required=True, help="group column")
    p.add_argument("--weight", help="sample weight column")
    p.add_argument(
        "--constraint",
        default="equal_opportunity",
        choices=["none", "per_group", "demographic_parity", "equal_opportunity", "equalized_odds"],
    )
    p.add_argument(
        "--objective", default="accuracy", choices=["accuracy", "balanced_accuracy", "cost"]
    )
    p.add_argument("--cost", type=parse_cost, help="TN,FP,FN,TP expected costs (utility < 0)")
    p.add_argument("--tolerance", type=float, default=0.0, help="allowed gap in the constraint")
    p.add_argument("--policy-snippet", action="store_true", help="print YAML for a policy")
    p.set_defaults(run=run_calibrate)


def parse_cost(text: str) -> tuple[float, float, float, float]:
    """ "TN,FP,FN,TP" into four floats."""
    parts = [float(x) for x in text.split(",")]
    if len(parts) != 4:
        raise argparse.ArgumentTypeError("--cost needs four numbers: TN,FP,FN,TP")
    return (parts[0], parts[1], parts[2], parts[3])


def run_calibrate(args: argparse.Namespace) -> int:
    """Print the fitted thresholds as JSON, or as a policy snippet."""
    from guardproxy.monitors.calibrate_csv import calibrate_command

    return print_or_fail(
        lambda: calibrate_command(
            args.data, args.score, args.label, args.group, args.weight, args.constraint,
            args.objective, args.cost, args.tolerance, args.policy_snippet,
        )
    )  # fmt: skip


def add_baseline(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`guardproxy baseline`: reference histograms for drift monitors."""
    p = sub.add_parser("baseline", help="build drift reference histograms from a CSV")
    p.add_argument("--data", required=True, help="CSV file with a header row")
    p.add_argument("--columns", required=True, help="comma-separated signal columns")
    p.add_argument("--categorical", default="", help="which of them are categorical")
    p.add_argument("--group", help="group column: references per group as well")
    p.add_argument("--bins", type=int, default=10)
    p.add_argument("--out", default="baseline.json")
    p.set_defaults(run=run_baseline)


def run_baseline(args: argparse.Namespace) -> int:
    """Write the baseline JSON; print a summary."""
    from guardproxy.monitors.baseline import baseline_command

    columns = [c for c in args.columns.split(",") if c]
    categorical = [c for c in args.categorical.split(",") if c]
    return print_or_fail(
        lambda: baseline_command(args.data, columns, categorical, args.group, args.bins, args.out)
    )


def add_review(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`guardproxy review SINK_DIR`."""
    p = sub.add_parser("review", help="list flagged samples from a JSONL sink directory")
    p.add_argument("sink_dir")
    p.add_argument("--region")
    p.add_argument("--group")
    p.add_argument("--label", help="only samples flagged for this label")
    p.add_argument("--all", action="store_true", help="every sample, not only flagged ones")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(run=run_review)


def run_review(args: argparse.Namespace) -> int:
    """Print one line per matching sample."""
    from guardproxy.review import review_command

    return print_or_fail(
        lambda: review_command(
            args.sink_dir, args.region, args.group, args.label, not args.all, args.limit
        )
    )


def add_top(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`guardproxy top [--admin URL]`."""
    p = sub.add_parser("top", help="a live table of the models, worst behaving first")
    p.add_argument(
        "--admin",
        default=env_value("ADMIN_URL", "http://127.0.0.1:9901"),
        help="the admin port's URL (env GUARDPROXY_ADMIN_URL; default %(default)s)",
    )
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    p.add_argument("--once", action="store_true", help="print the table once and exit")
    p.set_defaults(run=run_top)


def run_top(args: argparse.Namespace) -> int:
    """Show the fleet view until interrupted."""
    from guardproxy.top import top

    return top(args.admin, args.interval, args.once)


def print_or_fail(make: Callable[[], str]) -> int:
    """Print a command's output; a bad input is one clear line on stderr and exit 2."""
    try:
        print(make())
    except (ValueError, OSError, KeyError) as exc:
        print(f"guardproxy: {exc}", file=sys.stderr)
        return 2
    return 0


COMMANDS: Sequence[Callable[[argparse._SubParsersAction], None]] = (  # type: ignore[type-arg]
    add_serve,
    add_validate,
    add_calibrate,
    add_baseline,
    add_review,
    add_top,
    add_demo,
)


def parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    p = argparse.ArgumentParser(
        prog="guardproxy",
        description="Fairness, label and drift policies inline in front of a model server.",
        epilog="Every serve flag also reads GUARDPROXY_<FLAG> from the environment.",
    )
    p.add_argument("--version", action="version", version=f"guardproxy {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `guardproxy` command."""
    args = parser().parse_args(argv)
    try:
        level = parse_level(getattr(args, "log_level", None) or env_value("LOG_LEVEL", "info"))
        fmt = parse_format(getattr(args, "log_format", None) or env_value("LOG_FORMAT", "text"))
    except ValueError as exc:
        print(f"guardproxy: {exc}", file=sys.stderr)
        return 2
    configure_logging(level, fmt)
    code: int = args.run(args)
    return code


def env_value(name: str, default: str) -> str:
    """A GUARDPROXY_* variable, for the commands that have no flag for it."""
    return os.environ.get(f"GUARDPROXY_{name}", default)


if __name__ == "__main__":
    sys.exit(main())
