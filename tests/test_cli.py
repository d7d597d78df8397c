"""The command line: validate, calibrate, baseline, review exit codes and output."""

from __future__ import annotations

import json
import logging
import re
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from guardproxy import __version__
from guardproxy.cli import main, parse_cost, parser, settings_from
from guardproxy.dataport import data_server
from guardproxy.transport import Request, ResponseWriter

POLICIES = Path(__file__).parent.parent / "policies"


def test_validate_examples_exit_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(POLICIES)]) == 0
    assert "all policies valid" in capsys.readouterr().out


def test_validate_broken_directory_lists_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "default.yaml").write_text("region: default\nsampling:\n  rate: 2\n")
    assert main(["validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "default.yaml:3:" in out
    assert "rate" in out


@pytest.mark.parametrize(
    ("section", "fragment"),
    [
        ("groups: {attribute: {jsonpath: '$.a['}, values: [a, b]}", "JSON path '$.a['"),
        ("decision: {subject: {jsonpath: '$..x'}}", "JSON path '$..x'"),
        ("sampling: {redact: [email, '$.a[?b==]']}", "JSON path '$.a[?b==]'"),
    ],
)
def test_validate_refuses_what_serve_would(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], section: str, fragment: str
) -> None:
    (tmp_path / "default.yaml").write_text(f"region: default\nmodels: [{{name: m}}]\n{section}\n")
    assert main(["validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "default.yaml: model 'm':" in out and fragment in out


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_on_policies_that_do_not_load_says_why_without_a_traceback(
    tmp_path: Path, workers: str
) -> None:
    (tmp_path / "default.yaml").write_text("region: default\nsampling:\n  rat: 0.1\n")
    missing = tmp_path / "missing"
    for policies, problem in ((tmp_path, "default.yaml:3:3: sampling.rat: unknown key"),
                              (missing, "missing: cannot read directory")):  # fmt: skip
        serve = [sys.executable, "-m", "guardproxy.cli", "serve", "--policies", str(policies),
                 "--upstream", "http://127.0.0.1:9", "--listen", "127.0.0.1:0",
                 "--admin", "127.0.0.1:0", "--workers", workers]  # fmt: skip
        done = subprocess.run(serve, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 1, done.stderr
        assert "the policies do not load, so nothing is served:" in done.stderr
        assert problem in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_serve_flags_default_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUARDPROXY_UPSTREAM", "http://127.0.0.1:8081")
    monkeypatch.setenv("GUARDPROXY_LISTEN", "127.0.0.1:18080")
    monkeypatch.setenv("GUARDPROXY_REGION", "sg")
    monkeypatch.setenv("GUARDPROXY_ADMIN_TOKEN", "t0k")
    settings = settings_from(parser().parse_args(["serve"]))
    assert settings.upstream == "http://127.0.0.1:8081"
    assert settings.listen == ("127.0.0.1", 18080)
    assert settings.region == "sg"
    assert settings.admin_token == "t0k"
    flagged = settings_from(parser().parse_args(["serve", "--region", "th"]))
    assert flagged.region == "th"


def test_limit_timeout_and_worker_flags_reach_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GUARDPROXY_UPSTREAM", "http://127.0.0.1:8081")
    monkeypatch.setenv("GUARDPROXY_BODY_TIMEOUT", "7")
    flags = ["--header-timeout", "3", "--upstream-concurrency", "5", "--upstream-queue", "9"]
    settings = settings_from(parser().parse_args(["serve", *flags, "--workers", "2"]))
    assert (settings.header_timeout, settings.body_timeout) == (3.0, 7.0)
    assert (settings.limits.per_key, settings.limits.queue) == (5, 9)
    assert settings.workers == 2


@pytest.mark.parametrize(("flag", "workers", "each"), [("10", 1, 10), ("10", 4, 2), ("0", 2, None)])
@pytest.mark.parametrize("name", ["max-connections", "max-connections-per-client"])
def test_connection_limits_are_shared_out_among_workers(
    name: str, flag: str, workers: int, each: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GUARDPROXY_UPSTREAM", "http://127.0.0.1:8081")
    args = parser().parse_args(["serve", f"--{name}", flag, "--workers", str(workers)])
    server = data_server(ok, settings_from(args))
    assert getattr(server.config, name.replace("-", "_")) == each


async def ok(request: Request, writer: ResponseWriter) -> None:
    """A handler that answers 200."""
    writer.send(200, [])


def test_an_upstream_other_than_plain_http_is_a_clear_error() -> None:
    args = parser().parse_args(["serve", "--upstream", "https://model:8443"])
    with pytest.raises(SystemExit, match="expected http://"):
        settings_from(args)


def test_token_from_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "token"
    secret.write_text("from-a-secret\n")
    monkeypatch.setenv("GUARDPROXY_UPSTREAM", "http://127.0.0.1:8081")
    monkeypatch.delenv("GUARDPROXY_FEEDBACK_TOKEN", raising=False)
    monkeypatch.setenv("GUARDPROXY_FEEDBACK_TOKEN_FILE", str(secret))
    settings = settings_from(parser().parse_args(["serve"]))
    assert settings.feedback_token == "from-a-secret"
    assert settings.feedback_token_file == str(secret)  # followed: a rotated Secret counts
    monkeypatch.setenv("GUARDPROXY_FEEDBACK_TOKEN", "from-the-environment")
    assert settings_from(parser().parse_args(["serve"])).feedback_token_file is None


@pytest.mark.parametrize("name", ["ADMIN_TOKEN", "FEEDBACK_TOKEN", "DECISION_KEY"])
def test_a_secret_file_that_cannot_be_read_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv("GUARDPROXY_UPSTREAM", "http://127.0.0.1:8081")
    monkeypatch.delenv(f"GUARDPROXY_{name}", raising=False)
    monkeypatch.setenv(f"GUARDPROXY_{name}_FILE", str(tmp_path / "absent"))
    expected = f"GUARDPROXY_{name}_FILE: cannot read {tmp_path / 'absent'}: No such file"
    with pytest.raises(SystemExit, match=re.escape(expected)):
        settings_from(parser().parse_args(["serve"]))


def test_trust_is_off_unless_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUARDPROXY_UPSTREAM", "http://127.0.0.1:8081")
    for name in ("TRUST_REGION_HEADER", "TRUST_FORWARDED", "DECISION_KEY", "DECISION_KEY_FILE"):
        monkeypatch.delenv(f"GUARDPROXY_{name}", raising=False)
    plain = settings_from(parser().parse_args(["serve"]))
    assert (plain.trust_region_header, plain.trust_forwarded, plain.decision_key) == (
        None,
        False,
        None,
    )
    monkeypatch.setenv("GUARDPROXY_TRUST_REGION_HEADER", "X-Region")
    monkeypatch.setenv("GUARDPROXY_TRUST_FORWARDED", "true")
    trusting = settings_from(parser().parse_args(["serve"]))
    assert (trusting.trust_region_header, trusting.trust_forwarded) == ("X-Region", True)
    flagged = parser().parse_args(["serve", "--trust-region-header", "X-Pod-Region"])
    assert settings_from(flagged).trust_region_header == "X-Pod-Region"


def test_decision_key_from_a_file_and_too_short_a_key_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GUARDPROXY_UPSTREAM", "http://127.0.0.1:8081")
    monkeypatch.delenv("GUARDPROXY_DECISION_KEY", raising=False)
    key = tmp_path / "key"
    key.write_text("0123456789abcdef0123\n")
    monkeypatch.setenv("GUARDPROXY_DECISION_KEY_FILE", str(key))
    settings = settings_from(parser().parse_args(["serve"]))
    assert settings.decision_key == "0123456789abcdef0123"
    assert settings.decision_key in settings.secrets()
    monkeypatch.setenv("GUARDPROXY_DECISION_KEY", "short")
    with pytest.raises(SystemExit, match="at least 16 characters"):
        settings_from(parser().parse_args(["serve"]))


def test_serve_without_upstream_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GUARDPROXY_UPSTREAM", raising=False)
    with pytest.raises(SystemExit, match="--upstream"):
        settings_from(parser().parse_args(["serve"]))


def test_calibrate_prints_json_per_group(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = ["score,label,group"]
    for i in range(200):
        group = "a" if i % 2 else "b"
        score = (i % 50) / 50 + (0.1 if group == "a" else 0.0)
        rows.append(f"{min(score, 1.0):.3f},{int(score > 0.55)},{group}")
    data = tmp_path / "scores.csv"
    data.write_text("\n".join(rows) + "\n")
    args = ["calibrate", "--data", str(data), "--score", "score", "--label", "label"]
    assert main([*args, "--group", "group"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc["groups"]) == {"a", "b"}
    assert main([*args, "--group", "missing"]) == 2
    assert "missing" in capsys.readouterr().err


def test_parse_cost() -> None:
    assert parse_cost("0,1,5,-2") == (0.0, 1.0, 5.0, -2.0)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_code:
        main(["--version"])
    assert exit_code.value.code == 0
    assert capsys.readouterr().out == f"guardproxy {__version__}\n"
    assert __version__ == metadata.version("guardproxy")  # one version, written once


@pytest.mark.parametrize("level", ["debug", "DEBUG", "Warning"])
def test_log_levels_in_any_case(level: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUARDPROXY_LOG_LEVEL", level)
    assert main(["validate", str(POLICIES)]) == 0
    assert logging.getLogger().level == logging.getLevelName(level.upper())
    assert parser().parse_args(["serve", "--log-level", level]).log_level == level.lower()


def test_an_unknown_level_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GUARDPROXY_LOG_LEVEL", "verbose")
    assert main(["validate", str(POLICIES)]) == 2
    assert capsys.readouterr().err == (
        "guardproxy: unknown log level 'verbose': expected one of debug, info, warning, "
        "error, critical\n"
    )
    with pytest.raises(SystemExit):
        parser().parse_args(["serve", "--log-level", "verbose"])
    assert "(from --log-level or GUARDPROXY_LOG_LEVEL)" in capsys.readouterr().err


def test_grpc_flags_default_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUARDPROXY_UPSTREAM", "http://127.0.0.1:8081")
    monkeypatch.setenv("GUARDPROXY_GRPC_LISTEN", ":9090")
    monkeypatch.setenv("GUARDPROXY_GRPC_UPSTREAM", "127.0.0.1:8081")
    settings = settings_from(parser().parse_args(["serve"]))
    assert (settings.grpc_listen, settings.grpc_upstream) == (("0.0.0.0", 9090), "127.0.0.1:8081")
    flagged = settings_from(parser().parse_args(["serve", "--grpc-upstream", "[::1]:9000"]))
    assert flagged.grpc_upstream == "[::1]:9000"
    monkeypatch.delenv("GUARDPROXY_GRPC_LISTEN")
    monkeypatch.delenv("GUARDPROXY_GRPC_UPSTREAM")
    plain = settings_from(parser().parse_args(["serve"]))
    assert (plain.grpc_listen, plain.grpc_upstream) == (None, None)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--grpc-listen", ":9090"], "go together"),
        (["--grpc-upstream", "127.0.0.1:8081"], "go together"),
        (["--grpc-listen", ":9090", "--grpc-upstream", "http://127.0.0.1:8081"], "not a URL"),
        (["--grpc-listen", "nowhere", "--grpc-upstream", "127.0.0.1:8081"], "not an address"),
    ],
)
def test_grpc_flags_that_cannot_work_are_clear_errors(
    monkeypatch: pytest.MonkeyPatch, flags: list[str], message: str
) -> None:
    monkeypatch.setenv("GUARDPROXY_UPSTREAM", "http://127.0.0.1:8081")
    monkeypatch.delenv("GUARDPROXY_GRPC_LISTEN", raising=False)
    monkeypatch.delenv("GUARDPROXY_GRPC_UPSTREAM", raising=False)
    with pytest.raises(SystemExit, match=message):
        settings_from(parser().parse_args(["serve", *flags]))


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("flag", ["--listen", "--admin"])
def test_serve_on_a_port_in_use_says_which_without_a_traceback(flag: str, workers: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        ports = {"--listen": "127.0.0.1:0", "--admin": "127.0.0.1:0", flag: address}
        serve = [sys.executable, "-m", "guardproxy.cli", "serve", "--upstream",
                 "http://127.0.0.1:9", "--listen", ports["--listen"], "--admin",
                 ports["--admin"], "--workers", workers]  # fmt: skip
        done = subprocess.run(serve, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0, done.stderr
    assert f"{flag}: cannot listen on {address}: Address already in use" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr
