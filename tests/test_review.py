"""`review_command`: flagged samples listed from JSONL files, filtered."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guardproxy.review import review_command


def write(directory: Path, name: str, *records: dict[str, object]) -> None:
    text = "".join(json.dumps(r) + "\n" for r in records)
    (directory / name).write_text(text)


def record(
    rid: str, region: str = "sg", group: str = "female", flags: list[str] | None = None
) -> dict[str, object]:
    return {
        "time": f"2024-05-01T00:00:0{rid[-1]}+00:00",
        "request_id": rid,
        "region": region,
        "groups": [group],
        "flags": flags or [],
        "decisions": [1],
    }


@pytest.fixture
def samples(tmp_path: Path) -> Path:
    write(
        tmp_path,
        "samples-20240501T000000.000000Z.jsonl",
        record("a1", flags=["label:gorilla"]),
        record("a2"),
    )
    write(
        tmp_path,
        "samples-20240501T010000.000000Z.jsonl",
        record("b3", region="id", group="male", flags=["suppressed:ape"]),
        record("b4", flags=["decision: bad payload"]),
    )
    (tmp_path / "other.txt").write_text("not a sample")
    return tmp_path


def test_lists_flagged_only_oldest_first(samples: Path) -> None:
    out = review_command(samples).splitlines()
    assert [line.split()[1] for line in out] == ["a1", "b3", "b4"]
    assert out[0] == "2024-05-01T00:00:01+00:00  a1  sg  female  label:gorilla  decision=1"


def test_filters(samples: Path) -> None:
    assert review_command(samples, region="id").split()[1] == "b3"
    assert review_command(samples, group="male").split()[1] == "b3"
    assert review_command(samples, label="gorilla").split()[1] == "a1"
    assert len(review_command(samples, flagged_only=False).splitlines()) == 4
    assert review_command(samples, limit=1).split()[1] == "b4"
    assert review_command(samples, region="th") == "no matching samples"


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no sample directory"):
        review_command(tmp_path / "missing")
    with pytest.raises(ValueError, match="limit must be at least 1"):
        review_command(tmp_path, limit=0)
