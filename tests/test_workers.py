"""Worker settings: one data port for all, an admin port each."""

from __future__ import annotations

from guardproxy.settings import Settings
from guardproxy.workers import reserve_port, worker_settings


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
