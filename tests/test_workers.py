"""Worker settings: one data port for all, an admin port each."""

from __future__ import annotations

from pathlib import Path

from guardproxy.app import Runtime
from guardproxy.sampling.jsonl import JsonlSink
from guardproxy.settings import Settings
from guardproxy.workers import reserve_port, shared_decision_key, worker_settings


def test_worker_i_serves_the_admin_api_on_the_admin_port_plus_i() -> None:
    base = Settings("http://127.0.0.1:8081", listen=("0.0.0.0", 0), admin=("127.0.0.1", 9901))
    second = worker_settings(base, 1, 8080)
    assert second.listen == ("0.0.0.0", 8080) and second.admin == ("127.0.0.1", 9902)
    assert second.worker == 1 and second.upstream == base.upstream
    picked = worker_settings(Settings("http://u:1", admin=("127.0.0.1", 0)), 1, 8080)
    assert picked.admin == ("127.0.0.1", 0)  # port 0: each worker picks its own


def test_a_reserved_port_is_shared_not_taken() -> None:
    reserved, port = reserve_port("127.0.0.1", 0)
    again, same = reserve_port("127.0.0.1", port)  # SO_REUSEPORT: a second bind succeeds
    assert port > 0 and same == port
    reserved.close()
    again.close()


def test_only_worker_0_serves_the_grpc_port() -> None:
    base = Settings("http://u:1", grpc_listen=("0.0.0.0", 8091), grpc_upstream="127.0.0.1:8081")
    first, second = (worker_settings(base, i, 8080) for i in (0, 1))
    assert (first.grpc_listen, first.grpc_upstream) == (("0.0.0.0", 8091), "127.0.0.1:8081")
    assert (second.grpc_listen, second.grpc_upstream) == (None, None)


async def test_each_worker_keeps_to_its_share_of_the_sample_budget(tmp_path: Path) -> None:
    settings = Settings("http://127.0.0.1:9", samples_dir=tmp_path, workers=4, worker=3)
    runtime = Runtime(settings)
    budget = runtime.store.table.default.policy.sampling.sink.max_total_bytes
    sink = runtime.sample_writer.sink
    assert isinstance(sink, JsonlSink)
    assert sink.max_total_bytes == budget // 4 and sink.suffix == "-w3"


def test_workers_on_the_memory_state_share_one_decision_key() -> None:
    shared = shared_decision_key(Settings("http://u:1", workers=2))
    assert shared.decision_key is not None and len(shared.decision_key) == 64
    assert "supervisor" in shared.decision_key_source
    assert shared.decision_key in shared.secrets()  # masked like a configured key
    configured = Settings("http://u:1", workers=2, decision_key="k" * 32)
    assert shared_decision_key(configured) is configured
    redis = Settings("http://u:1", workers=2, state="redis://127.0.0.1:6379/0")
    assert shared_decision_key(redis).decision_key is None  # shared through Redis instead
