"""Reloading policies: the kubelet's ..data swap, broken updates, counters, the watcher."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from guardproxy.policy.loader import PolicyError, PolicyFiles
from guardproxy.policy.models import ModelPolicy
from guardproxy.policy.table import PolicyTable
from guardproxy.policy.watch import PolicyStore, PolicyWatcher
from guardproxy.testing import eventually

from .kubelet import atomic_write

DEFAULT = (
    "region: default\ngroups: {values: [Female, Male]}\ndecision: {threshold: 0.5}\n"
    "models: [{name: m}]\n"
)
SG = "region: sg\nextends: default\ndecision: {threshold: 0.4}\n"
BROKEN_SG = "region: sg\nextends: default\ndecision:\n  threshold: high\n"
INTERVAL = 0.05
Mounted = tuple[Path, PolicyStore, list[PolicyTable]]


def threshold(store: PolicyStore, region: str) -> float:
    return store.snapshot.current.regions[region].policy.decision.threshold


@pytest.fixture
async def mounted(tmp_path: Path) -> AsyncIterator[Mounted]:
    atomic_write(tmp_path, {"default.yaml": DEFAULT, "sg.yaml": SG})
    swapped: list[PolicyTable] = []
    store = PolicyStore(tmp_path, default_region="sg", on_swap=[swapped.append])
    watcher = PolicyWatcher(store, interval=INTERVAL)
    await watcher.start()
    yield tmp_path, store, swapped
    await watcher.stop()
    assert not watcher.running


async def test_data_symlink_swap_is_picked_up(mounted: Mounted) -> None:
    directory, store, swapped = mounted
    before = store.table
    atomic_write(directory, {"default.yaml": DEFAULT, "sg.yaml": SG.replace("0.4", "0.45")})
    await eventually(lambda: store.reloads_ok == 1)
    assert threshold(store, "sg") == 0.45
    assert store.table.regions["sg"].version != before.regions["sg"].version
    assert store.table.regions["default"].version == before.regions["default"].version
    assert swapped == [store.table]
    assert store.table.default_region == "sg"


async def test_broken_update_keeps_serving_the_last_good_table(
    mounted: Mounted, caplog: pytest.LogCaptureFixture
) -> None:
    directory, store, swapped = mounted
    good = store.table
    with caplog.at_level(logging.WARNING, "guardproxy.policy"):
        atomic_write(directory, {"default.yaml": DEFAULT, "sg.yaml": BROKEN_SG})
        await eventually(lambda: store.reloads_failed == 1)
        await asyncio.sleep(INTERVAL * 3)
    assert store.table is good and swapped == []
    assert store.last_error is not None
    assert store.last_error[0].startswith(f"{directory}/sg.yaml:4:3: decision.threshold")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "sg.yaml:4:3" in warnings[0].getMessage()
    atomic_write(directory, {"default.yaml": DEFAULT, "sg.yaml": SG.replace("0.4", "0.3")})
    await eventually(lambda: store.reloads_ok == 1)
    assert store.last_error is None and threshold(store, "sg") == 0.3


async def test_renamed_and_removed_keys(mounted: Mounted) -> None:
    directory, store, _ = mounted
    th = SG.replace("region: sg", "region: th")
    atomic_write(directory, {"default.yaml": DEFAULT, "sg.yaml": SG, "th.yaml": th})
    await eventually(lambda: store.reloads_ok == 1)
    assert set(store.table.regions) == {"default", "sg", "th"}
    atomic_write(directory, {"default.yaml": DEFAULT, "sg.yaml": SG})
    await eventually(lambda: store.reloads_ok == 2)
    assert set(store.table.regions) == {"default", "sg"}
    assert not (directory / "th.yaml").exists()
    assert store.table.default_region == "sg"


async def test_plain_directory_edits(tmp_path: Path) -> None:
    (tmp_path / "default.yaml").write_text(DEFAULT)
    (tmp_path / "sg.yaml").write_text(SG)
    store = PolicyStore(tmp_path)
    watcher = PolicyWatcher(store, interval=INTERVAL)
    await watcher.start()
    try:
        (tmp_path / "sg.new").write_text(SG.replace("0.4", "0.35"))
        os.replace(tmp_path / "sg.new", tmp_path / "sg.yaml")  # replaced in place
        await eventually(lambda: store.reloads_ok == 1)
        assert threshold(store, "sg") == 0.35
        os.rename(tmp_path / "sg.yaml", tmp_path / "sg.yml")  # renamed, same content
        await eventually(lambda: store.reloads_ok == 2)
        assert store.table.regions["sg"].sources[-1].endswith("sg.yml")
        (tmp_path / "sg.yml").unlink()  # removed
        await eventually(lambda: store.reloads_ok == 3)
        assert set(store.table.regions) == {"default"}
    finally:
        await watcher.stop()


def test_reload_counts_and_status(tmp_path: Path) -> None:
    atomic_write(tmp_path, {"default.yaml": DEFAULT, "sg.yaml": SG})
    store = PolicyStore(tmp_path, clock=lambda: 1_764_151_200.0)
    assert store.reload().status == "unchanged"
    assert store.reload(force=True).status == "ok"
    atomic_write(tmp_path, {"default.yaml": DEFAULT, "sg.yaml": BROKEN_SG})
    failed = store.reload()
    assert failed.status == "failed" and "sg.yaml:4:3" in failed.problems[0]
    assert store.reload().problems == failed.problems  # same bad content: no second attempt
    status = store.status()
    assert json.loads(json.dumps(status)) == status
    assert (status["reloads_ok"], status["reloads_failed"]) == (1, 1)
    assert status["last_error"] == list(failed.problems)
    assert status["loaded_at"] == "2025-11-26T10:00:00+00:00"
    assert status["regions"]["sg"]["sources"] == [
        str(tmp_path / n) for n in ("default.yaml", "sg.yaml")
    ]
    assert status["content_hash"] != store._seen_hash


def test_startup_with_broken_policies_fails_loudly(tmp_path: Path) -> None:
    atomic_write(tmp_path, {"default.yaml": DEFAULT, "sg.yaml": BROKEN_SG})
    with pytest.raises(PolicyError, match=r"sg\.yaml:4:3"):
        PolicyStore(tmp_path)


def test_a_failing_chain_factory_keeps_the_old_table(tmp_path: Path) -> None:
    atomic_write(tmp_path, {"default.yaml": DEFAULT})

    def build(region: str, spec: ModelPolicy, version: str) -> object:
        if region == "sg":
            raise ValueError("no guard for sg")
        return region

    store = PolicyStore(tmp_path, build_chain=build)
    atomic_write(tmp_path, {"default.yaml": DEFAULT, "sg.yaml": SG})
    result = store.reload()
    assert result.status == "failed" and "no guard for sg" in result.problems[0]
    assert set(store.table.regions) == {"default"}


async def test_watcher_survives_errors(tmp_path: Path) -> None:
    atomic_write(tmp_path, {"default.yaml": DEFAULT})

    def crash(table: PolicyTable) -> None:
        raise RuntimeError("a subscriber failed")

    store = PolicyStore(tmp_path, on_swap=[crash])
    real_read, calls = store.read, []

    def flaky_read() -> PolicyFiles:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("disk went away")
        return real_read()

    store.read = flaky_read  # type: ignore[method-assign]

    watcher = PolicyWatcher(store, interval=INTERVAL)
    await watcher.start()
    try:
        atomic_write(tmp_path, {"default.yaml": DEFAULT, "sg.yaml": SG})
        await eventually(lambda: store.reloads_ok == 1)
        assert watcher.running and "sg" in store.table.regions and len(calls) >= 2
    finally:
        await watcher.stop()


async def test_builtin_store_has_nothing_to_watch() -> None:
    store = PolicyStore(None)
    watcher = PolicyWatcher(store)
    await watcher.start()
    assert not watcher.running
    assert store.reload().status == "unchanged"
    assert store.status()["regions"]["default"]["sources"] == ["<builtin>/default.yaml"]
    with pytest.raises(ValueError):
        PolicyWatcher(store, interval=0)


def test_a_configmap_is_read_from_the_one_version_data_names(tmp_path: Path) -> None:
    # The kubelet between two steps: ..data names the new version, whose new file has no
    # top-level link yet. Read through the links, that was the new default without the new
    # region: a set of policies never published.
    atomic_write(tmp_path, {"default.yaml": DEFAULT})
    new = tmp_path / "..2026_11_30_00_00_00.1"
    new.mkdir()
    (new / "default.yaml").write_text(DEFAULT.replace("0.5", "0.6"))
    (new / "sg.yaml").write_text(SG)
    os.symlink(new.name, tmp_path / "..data_tmp")
    os.rename(tmp_path / "..data_tmp", tmp_path / "..data")
    store = PolicyStore(tmp_path)
    assert (threshold(store, "default"), threshold(store, "sg")) == (0.6, 0.4)


async def test_reloads_apply_in_the_order_they_read(tmp_path: Path) -> None:
    atomic_write(tmp_path, {"default.yaml": DEFAULT})
    store = PolicyStore(tmp_path)
    watcher = PolicyWatcher(store, INTERVAL)
    release, building = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    build = store.build

    def slow_first(files: PolicyFiles) -> PolicyTable | list[str]:
        if b"0.6" in files.files["default.yaml"]:  # the first reload waits to be released
            loop.call_soon_threadsafe(building.set)
            asyncio.run_coroutine_threadsafe(release.wait(), loop).result()
        return build(files)

    store.build = slow_first  # type: ignore[method-assign]
    atomic_write(tmp_path, {"default.yaml": DEFAULT.replace("0.5", "0.6")})
    first = asyncio.create_task(watcher.check(force=True))
    await building.wait()
    atomic_write(tmp_path, {"default.yaml": DEFAULT.replace("0.5", "0.7")})
    assert (await watcher.check(force=True)).status == "ok"  # read 0.7 and committed it
    release.set()
    assert (await first).status == "unchanged"  # read before: dropped
    assert threshold(store, "default") == 0.7  # the newer read is served, not the older


async def test_a_reload_that_drops_the_pods_region_is_refused(mounted: Mounted) -> None:
    directory, store, _ = mounted  # the pod's region is sg
    atomic_write(directory, {"default.yaml": DEFAULT})  # sg.yaml deleted by mistake
    result = store.reload()
    assert result.status == "failed" and "region 'sg' is no longer" in result.problems[0]
    assert threshold(store, "sg") == 0.4 and store.status()["reloads_failed"] == 1


def test_policy_files_are_found_whatever_the_case_of_their_suffix(tmp_path: Path) -> None:
    (tmp_path / "default.yaml").write_text(DEFAULT)
    (tmp_path / "sg.YAML").write_text(SG)
    assert threshold(PolicyStore(tmp_path), "sg") == 0.4
