"""The serve flags: every one documented in --help and in the README, each value checked."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from guardproxy.cli import main, parser, settings_from
from guardproxy.options import SERVE_FLAGS, Flag, readme_table

README = Path(__file__).parent.parent / "README.md"


def help_entries(text: str) -> dict[str, str]:
    """`serve --help` as {flag: its help text, wrapped lines joined}."""
    entries: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        found = re.match(r"^  (--[a-z-]+)(?: [A-Z:|/]+)?(?:\s{2,}(.*))?$", line)
        if found:
            current = found.group(1)
            entries[current] = found.group(2) or ""
        elif current and line.startswith(" " * 10):
            entries[current] += " " + line.strip()
        else:
            current = None
    return {flag: " ".join(text.split()) for flag, text in entries.items()}


def settings_flags() -> set[str]:
    """The flags settings_from reads (args.<dest>), spelled as flags."""
    source = inspect.getsource(settings_from)
    return {"--" + dest.replace("_", "-") for dest in re.findall(r"args\.(\w+)", source)}


@pytest.mark.parametrize("columns", ["60", "200"])
def test_help_shows_every_flag_with_its_help_variable_and_default(
    columns: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", columns)  # argparse wraps to the terminal's width
    with pytest.raises(SystemExit) as exit_code:
        main(["serve", "--help"])
    assert exit_code.value.code == 0
    entries = help_entries(capsys.readouterr().out)
    assert set(entries) == {flag.name for flag in SERVE_FLAGS}
    assert settings_flags() <= set(entries), "settings_from reads a flag --help does not show"
    assert {"--log-level", "--log-format"} <= set(entries)
    for flag in SERVE_FLAGS:
        text = entries[flag.name]
        assert text.startswith(flag.help), flag.name
        assert f"env {flag.env};" in text, flag.name
        expected = "required" if flag.required else f"default: {flag.default_text}"
        assert text.endswith(f"{expected})"), (flag.name, text)


def readme_rows() -> dict[str, tuple[str, str, str]]:
    """The README's serve flag table: {flag: (environment, default, meaning)}."""
    rows = {}
    for line in README.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) == 4 and cells[0].startswith("`--"):
            flag = cells[0].strip("`").split(" ")[0]
            rows[flag] = (cells[1], cells[2], cells[3])
    return rows


def readme_default(flag: Flag) -> str:
    """How the README table shows a default: literal values in backticks, words as they are."""
    if flag.required or flag.shown:
        return flag.default_text
    return f"`{flag.default}`"


def test_the_readme_table_matches_the_flags() -> None:
    assert readme_table() in README.read_text(encoding="utf-8")  # pasted as printed
    rows = readme_rows()
    assert list(rows) == [flag.name for flag in SERVE_FLAGS]
    for flag in SERVE_FLAGS:
        assert rows[flag.name] == (f"`{flag.env}`", readme_default(flag), flag.help), flag.name


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("CONNECT_TIMEOUT", "soon", "from --connect-timeout or GUARDPROXY_CONNECT_TIMEOUT"),
        ("READ_TIMEOUT", "-1", "seconds above 0"),
        ("DRAIN_TIMEOUT", "nan", "0 or more"),
        ("MAX_BODY", "0", "bytes above 0"),
        ("MAX_BUFFERED", "0", "bytes above 0"),
        ("MAX_BUFFERED", "256MiB", "from --max-buffered or GUARDPROXY_MAX_BUFFERED"),
        ("LOG_LEVEL", "loud", "unknown log level 'loud'"),
        ("LOG_FORMAT", "xml", "expected text or json"),
        ("WORKERS", "0", "whole number above 0"),
        ("UPSTREAM_CONCURRENCY", "many", "from --upstream-concurrency or GUARDPROXY_UPSTREAM_"),
        ("UPSTREAM_QUEUE", "-1", "whole number, 0 or more"),
        ("BODY_TIMEOUT", "-1", "seconds above 0"),
        ("BODY_MIN_RATE", "-5", "a number per second, 0 or more"),
        ("MAX_CONNECTIONS", "-1", "whole number, 0 or more"),
        (
            "LISTEN",
            "nonsense",
            "'nonsense' (from --listen or GUARDPROXY_LISTEN): expected HOST:PORT",
        ),
        ("ADMIN", "127.0.0.1:99999", "(from --admin or GUARDPROXY_ADMIN): expected HOST:PORT"),
    ],
)
def test_a_bad_variable_is_one_clear_line(
    name: str,
    value: str,
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(f"GUARDPROXY_{name}", value)
    with pytest.raises(SystemExit) as exit_code:
        parser().parse_args(["serve"])
    assert exit_code.value.code == 2
    assert message in capsys.readouterr().err


def test_values_are_parsed_from_flags_and_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUARDPROXY_UPSTREAM", "http://127.0.0.1:8081")
    monkeypatch.setenv("GUARDPROXY_READ_TIMEOUT", "2.5")
    monkeypatch.setenv("GUARDPROXY_ACCESS_LOG", "Yes")
    monkeypatch.setenv("GUARDPROXY_MAX_ROWS", "500")
    monkeypatch.setenv("GUARDPROXY_GRPC_MAX_CALLS", "8")
    monkeypatch.setenv("GUARDPROXY_BODY_MIN_RATE", "0")
    args = parser().parse_args(["serve", "--log-level", "WARNING", "--max-body", "1024"])
    settings = settings_from(args)
    assert settings.body_min_rate == 0.0
    assert settings.timeouts.read == 2.5 and settings.max_body == 1024
    assert settings.max_rows == 500 and settings.grpc_max_calls == 8
    assert settings.access_log is True and args.log_level == "warning"
    monkeypatch.setenv("GUARDPROXY_ACCESS_LOG", "off")
    assert settings_from(parser().parse_args(["serve"])).access_log is False
    assert settings_from(parser().parse_args(["serve", "--access-log"])).access_log is True
    monkeypatch.setenv("GUARDPROXY_ACCESS_LOG", "maybe")
    with pytest.raises(SystemExit, match="GUARDPROXY_ACCESS_LOG: expected true or false"):
        settings_from(parser().parse_args(["serve"]))


def test_max_buffered_defaults_to_256_mib_and_reads_its_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GUARDPROXY_UPSTREAM", "http://127.0.0.1:8081")
    flag = next(flag for flag in SERVE_FLAGS if flag.name == "--max-buffered")
    assert flag.env == "GUARDPROXY_MAX_BUFFERED" and flag.metavar == "BYTES"
    assert flag.default_text == "268435456 (256 MiB)"
    assert settings_from(parser().parse_args(["serve"])).max_buffered == 256 << 20
    monkeypatch.setenv("GUARDPROXY_MAX_BUFFERED", "65536")
    assert settings_from(parser().parse_args(["serve"])).max_buffered == 65536
    args = parser().parse_args(["serve", "--max-buffered", "131072"])  # the flag wins
    assert settings_from(args).max_buffered == 131072


def test_every_variable_the_docs_name_is_one_guardproxy_reads() -> None:
    docs = README.read_text(encoding="utf-8") + (README.parent / "k8s" / "README.md").read_text(
        encoding="utf-8"
    )
    named = set(re.findall(r"\bGUARDPROXY_[A-Z_]*[A-Z](?![A-Z_*])", docs))
    source = "\n".join(
        p.read_text(encoding="utf-8") for p in (README.parent / "guardproxy").rglob("*.py")
    )
    flags = {flag.env for flag in SERVE_FLAGS}
    # A secret's variable is read as NAME or, naming a file, NAME_FILE (settings.secret_from_env).
    unread = {
        name
        for name in named - flags
        if f'"{name.removesuffix("_FILE")}"' not in source
        and f'env_value("{name.removeprefix("GUARDPROXY_")}"' not in source
    }
    assert len(named) > 30 and unread == set()
