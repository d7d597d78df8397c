"""The targets and the server processes behind them."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from .layout import Layout
from .nginx import find_nginx, nginx_argv, write_config
from .processes import Service, free_port
from .upstream import GUARDED_PATH, UNGUARDED_PATH


@dataclass(frozen=True, slots=True)
class Target:
    """A URL to load: which service answers it on which path."""

    key: str
    name: str
    service: str
    path: str
    description: str
    kind: str = "json"  # the requests it gets: json, or binary (OIP binary tensor extension)


TARGETS = {
    t.key: t
    for t in (
        Target("a", "direct", "upstream-direct", GUARDED_PATH, "client -> upstream"),
        Target("b", "bare-aiohttp", "bare", GUARDED_PATH, "aiohttp pass-through proxy"),
        Target("c", "nginx", "nginx", GUARDED_PATH, "nginx reverse proxy, keepalive"),
        Target("d", "guardproxy-pass", "guardproxy", UNGUARDED_PATH, "guardproxy, unguarded path"),
        Target("e", "guardproxy-guarded", "guardproxy", GUARDED_PATH, "guardproxy, guarded path"),
        Target("f", "transport-pass", "transport", GUARDED_PATH, "transport pass-through"),
        # Its own process: the same rows as e, but FP32 in the binary answers, which the drift
        # monitors learnt from e's float64 scores would see as a shift (and open its breaker).
        Target(
            "g", "guardproxy-binary", "guardproxy-binary", GUARDED_PATH, "binary tensors", "binary"
        ),
    )
}


def parse_targets(text: str, nginx: bool) -> list[Target]:
    """Targets from keys like `a,b,c`; nginx is dropped (with a note) when it is not installed."""
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in TARGETS]
    if unknown or not keys:
        raise SystemExit(f"--targets: unknown {unknown} (choose from {','.join(TARGETS)})")
    if not nginx and "c" in keys:
        print("nginx is not installed: skipping target c", file=sys.stderr)
        keys.remove("c")
    return [TARGETS[k] for k in dict.fromkeys(keys)]


def python(module: str, *args: str) -> list[str]:
    """A command line running a module of this interpreter."""
    return [sys.executable, "-m", module, *args]


def upstream(name: str, cpus: frozenset[int], workdir: Path) -> Service:
    """A bench upstream process on a fresh port."""
    port = free_port()
    argv = python("bench.upstream", "--port", str(port))
    return Service(name, argv, port, cpus, log=workdir / f"{name}.log")


def proxy_service(name: str, behind: Service, layout: Layout, workdir: Path) -> Service:
    """The service `name` (bare, nginx, guardproxy[-binary], transport) in front of `behind`."""
    port, url = free_port(), f"http://127.0.0.1:{behind.port}"
    log = workdir / f"{name}.log"
    if name == "bare":
        return Service(name, python("bench.bare_proxy", "--upstream", url, "--port", str(port)),
                       port, layout.server, log=log)  # fmt: skip
    if name == "transport":
        argv = python("bench.transport_proxy", "--upstream", url, "--port", str(port))
        return Service(name, argv, port, layout.server, log=log)
    if name == "nginx":
        prefix = workdir / "nginx"
        argv = nginx_argv(find_nginx() or "nginx", prefix, write_config(prefix, port, behind.port))
        return Service(name, argv, port, layout.server, log=log)
    argv = python(
        "guardproxy.cli", "serve", "--upstream", url, "--listen", f"127.0.0.1:{port}",
        "--admin", f"127.0.0.1:{free_port()}", "--log-level", "WARNING",
        "--samples", str(workdir / f"{name}-samples"),
    )  # fmt: skip
    return Service(name, argv, port, layout.server, log=log)


def services_for(targets: list[Target], layout: Layout, workdir: Path) -> dict[str, Service]:
    """Every service the targets need, keyed by name; none is started yet."""
    needed = {t.service for t in targets}
    services: dict[str, Service] = {}
    if "upstream-direct" in needed:
        services["upstream-direct"] = upstream("upstream-direct", layout.server, workdir)
    proxies = [
        n for n in ("bare", "nginx", "guardproxy", "guardproxy-binary", "transport") if n in needed
    ]
    if proxies:
        behind = upstream("upstream-behind", layout.upstream, workdir)
        services[behind.name] = behind
        services.update((n, proxy_service(n, behind, layout, workdir)) for n in proxies)
    return services
